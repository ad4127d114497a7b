//! The operator's configuration file: which shared backends exist and which
//! Secrets hold their admin credentials. Read once at start-up.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde::Deserialize;

/// The configuration file (YAML).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperatorConfig {
    /// Named Postgres backends; tenants choose one by name.
    pub postgres: Vec<PostgresBackendConfig>,
    /// The shared Redis.
    pub redis: RedisConfig,
    /// The Vault/OpenBao server.
    pub vault: VaultConfig,
    /// Per-request timeout against any backend, so one slow backend cannot
    /// hold a reconcile forever.
    #[serde(default = "default_backend_timeout", with = "seconds")]
    pub backend_timeout: Duration,
    /// Where breach webhooks may be delivered.
    #[serde(default)]
    pub webhooks: WebhookConfig,
    /// The ClusterRole the operator binds in each tenant namespace for its
    /// access to Secrets there (it holds none cluster-wide).
    #[serde(default = "default_tenant_secrets_cluster_role")]
    pub tenant_secrets_cluster_role: String,
    /// The n8n workflow engine tenants' workflow templates are provisioned
    /// in; without it, a tenant that enables templates is told so.
    #[serde(default)]
    pub n8n: Option<N8nConfig>,
}

/// The n8n workflow engine.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct N8nConfig {
    /// Base URL of n8n (`https://n8n.example:5678`); its public API is
    /// under `/api/v1` and its webhooks under `/webhook`. Breach deliveries
    /// to this n8n are trusted whatever its address: the operator's
    /// configuration, not a manifest, names it.
    pub url: String,
    /// Secret key holding an API key of n8n's owner (`X-N8N-API-KEY`).
    pub api_key_secret: SecretKeyRef,
    /// Secret key holding the PEM certificates an `https://` n8n's
    /// certificate must chain to; the system's roots when absent.
    #[serde(default)]
    pub ca_secret: Option<SecretKeyRef>,
}

/// Breach webhook deliveries.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    /// Hosts or address blocks (`10.1.0.0/16`, `127.0.0.1`) a webhook may
    /// target although they are loopback, link-local, private or
    /// cluster-internal, all of which are refused otherwise.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Secret key holding PEM certificates receivers' certificates may
    /// chain to, besides the system's roots.
    #[serde(default)]
    pub ca_secret: Option<SecretKeyRef>,
}

/// One Postgres backend.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresBackendConfig {
    pub name: String,
    /// Secret key holding an admin connection string (`postgres://…`). Its
    /// `sslmode` and `sslrootcert` choose TLS (see the README).
    pub dsn_secret: SecretKeyRef,
    /// Secret key holding the PEM certificates the server's certificate
    /// must chain to (added to the DSN's `sslrootcert`, if any).
    #[serde(default)]
    pub ca_secret: Option<SecretKeyRef>,
    /// Size of the backend's connection pool.
    #[serde(default = "default_pool_size")]
    pub max_connections: usize,
}

/// The shared Redis.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisConfig {
    /// Secret key holding an admin URL (`redis://user:password@host:port`,
    /// or `rediss://…` for TLS).
    pub url_secret: SecretKeyRef,
    /// Secret key holding the PEM certificates a `rediss://` server's
    /// certificate must chain to; the system's roots when absent.
    #[serde(default)]
    pub ca_secret: Option<SecretKeyRef>,
}

/// The Vault/OpenBao server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultConfig {
    /// Server address, such as `https://vault.vault.svc:8200`.
    pub address: String,
    /// Secret key holding a token allowed to manage policies, auth roles and the KV mount.
    pub token_secret: SecretKeyRef,
    /// Secret key holding the PEM certificates an `https://` server's
    /// certificate must chain to; the system's roots when absent.
    #[serde(default)]
    pub ca_secret: Option<SecretKeyRef>,
    /// KV v2 mount holding tenant secrets.
    #[serde(default = "default_kv_mount")]
    pub kv_mount: String,
    /// Kubernetes auth mount.
    #[serde(default = "default_auth_mount")]
    pub auth_mount: String,
}

/// A key of a Secret.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

fn default_backend_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_tenant_secrets_cluster_role() -> String {
    crate::tenant::secret_access::DEFAULT_CLUSTER_ROLE.into()
}

fn default_pool_size() -> usize {
    8
}

fn default_kv_mount() -> String {
    "secret".into()
}

fn default_auth_mount() -> String {
    "kubernetes".into()
}

mod seconds {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        f64::deserialize(d).map(Duration::from_secs_f64)
    }
}

impl OperatorConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        let config: Self = serde_yaml::from_str(&text)
            .with_context(|| format!("parsing the configuration {}", path.display()))?;
        anyhow::ensure!(
            !config.postgres.is_empty(),
            "the configuration names no Postgres backend"
        );
        Ok(config)
    }
}

impl SecretKeyRef {
    /// Reads the value with a single GET: the operator never caches Secrets it does not own.
    pub async fn read(&self, client: &kube::Client) -> anyhow::Result<String> {
        let secret = Api::<Secret>::namespaced(client.clone(), &self.namespace)
            .get(&self.name)
            .await
            .with_context(|| format!("reading Secret {}/{}", self.namespace, self.name))?;
        let bytes = secret
            .data
            .and_then(|mut d| d.remove(&self.key))
            .with_context(|| {
                format!(
                    "Secret {}/{} has no key {}",
                    self.namespace, self.name, self.key
                )
            })?;
        String::from_utf8(bytes.0).with_context(|| {
            format!(
                "Secret {}/{} key {} is not UTF-8",
                self.namespace, self.name, self.key
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_configuration() {
        let config: OperatorConfig = serde_yaml::from_str(
            r#"
postgres:
  - name: default
    dsnSecret: {namespace: partnerplane-system, name: pg, key: dsn}
  - name: eu-west
    dsnSecret: {namespace: partnerplane-system, name: pg-eu, key: dsn}
    caSecret: {namespace: partnerplane-system, name: pg-eu, key: ca.crt}
    maxConnections: 4
redis:
  urlSecret: {namespace: partnerplane-system, name: redis, key: url}
  caSecret: {namespace: partnerplane-system, name: redis, key: ca.crt}
vault:
  address: http://127.0.0.1:8200
  tokenSecret: {namespace: partnerplane-system, name: vault, key: token}
backendTimeout: 2.5
n8n:
  url: http://127.0.0.1:5678
  apiKeySecret: {namespace: partnerplane-system, name: n8n, key: api-key}
"#,
        )
        .unwrap();
        assert_eq!(config.postgres.len(), 2);
        assert_eq!(config.postgres[0].max_connections, 8);
        assert_eq!(config.postgres[0].ca_secret, None);
        assert_eq!(
            config.postgres[1]
                .ca_secret
                .as_ref()
                .map(|s| s.key.as_str()),
            Some("ca.crt")
        );
        assert_eq!(
            config.redis.ca_secret.as_ref().map(|s| s.name.as_str()),
            Some("redis")
        );
        assert_eq!(config.vault.ca_secret, None);
        assert_eq!(config.vault.kv_mount, "secret");
        assert_eq!(config.backend_timeout, Duration::from_millis(2500));
        let n8n = config.n8n.expect("n8n configured");
        assert_eq!(n8n.url, "http://127.0.0.1:5678");
        assert_eq!(n8n.api_key_secret.key, "api-key");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_yaml::from_str::<OperatorConfig>(
            "postgres: []\nredis: {}\nvault: {}\nbogus: 1\n",
        );
        assert!(err.is_err());
    }
}
