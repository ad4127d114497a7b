//! Vault/OpenBao: per-tenant KV v2 paths, a policy that reads only them, and
//! a Kubernetes-auth role that admits only the tenant's workload ServiceAccount
//! with a token issued for [`AUDIENCE`].
//!
//! Each write is preceded by a read and skipped when nothing differs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::config::VaultConfig;
use crate::metrics::Metrics;
use crate::naming::{TenantNames, WORKLOAD_SERVICE_ACCOUNT};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("Vault/OpenBao is unavailable: {0}")]
    Unavailable(#[source] ClientError),
    #[error("Vault/OpenBao refused the request (HTTP {code}): {errors}")]
    Refused { code: u16, errors: String },
}

impl From<ClientError> for VaultError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::APIError { code, errors } => Self::Refused {
                code,
                errors: errors.join("; "),
            },
            other => Self::Unavailable(other),
        }
    }
}

/// The policy text of a tenant: read its own KV paths, nothing else.
pub fn policy_text(kv_mount: &str, names: &TenantNames) -> String {
    let path = &names.vault_path;
    format!(
        "# Managed by partnerplane: tenant secrets, read-only.\n\
         path \"{kv_mount}/data/{path}/*\" {{\n  capabilities = [\"read\"]\n}}\n\
         path \"{kv_mount}/metadata/{path}/*\" {{\n  capabilities = [\"read\", \"list\"]\n}}\n"
    )
}

/// Audience a ServiceAccount token must be issued for to log in with a
/// tenant's Kubernetes-auth role.
///
/// Workloads log in with a projected ServiceAccount token requested for this
/// audience (a `serviceAccountToken` volume source with `audience: vault`, or
/// a TokenRequest with `spec.audiences: [vault]`); the token mounted for the
/// Kubernetes API (the API server's own audience) is refused, so a token
/// meant for one cannot be replayed against the other. `vault` is the
/// conventional value: Vault's documentation and the Kubernetes integrations
/// that project a token for Vault or OpenBao use it.
pub const AUDIENCE: &str = "vault";

/// Lifetime of a token issued by a tenant's role, renewable up to [`TOKEN_MAX_TTL`].
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest a token issued by a tenant's role lives, renewals included.
pub const TOKEN_MAX_TTL: Duration = Duration::from_secs(4 * 3600);

/// Deprecated spellings of token settings. OpenBao reports them only when a
/// write used them, and a write of the `token_*` fields clears them, so a
/// converged role shows none.
const LEGACY_FIELDS: [&str; 6] = [
    "policies",
    "bound_cidrs",
    "ttl",
    "max_ttl",
    "period",
    "num_uses",
];

/// The desired Kubernetes-auth role of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRole {
    pub service_accounts: Vec<String>,
    pub namespaces: Vec<String>,
    pub audience: String,
    pub policies: Vec<String>,
    pub token_ttl: Duration,
    pub token_max_ttl: Duration,
}

impl AuthRole {
    /// The tenant's workload ServiceAccount only, holding only the tenant's policy.
    pub fn new(names: &TenantNames) -> Self {
        Self {
            service_accounts: vec![WORKLOAD_SERVICE_ACCOUNT.into()],
            namespaces: vec![names.namespace.clone()],
            audience: AUDIENCE.into(),
            policies: vec![names.vault_policy.clone()],
            token_ttl: TOKEN_TTL,
            token_max_ttl: TOKEN_MAX_TTL,
        }
    }

    /// Every field the role is written with, valued as OpenBao reports it back
    /// (durations in seconds). Settings that would widen or prolong access are
    /// pinned to their defaults: no namespace selector, no periodic, batch or
    /// limited-use tokens, no CIDR binding to maintain, the default policy kept.
    pub fn fields(&self) -> Map<String, Value> {
        let json = json!({
            "bound_service_account_names": self.service_accounts,
            "bound_service_account_namespaces": self.namespaces,
            "bound_service_account_namespace_selector": "",
            "audience": self.audience,
            "alias_name_source": "serviceaccount_uid",
            "token_policies": self.policies,
            "token_ttl": self.token_ttl.as_secs(),
            "token_max_ttl": self.token_max_ttl.as_secs(),
            "token_explicit_max_ttl": 0,
            "token_period": 0,
            "token_type": "service",
            "token_bound_cidrs": [],
            "token_strictly_bind_ip": false,
            "token_no_default_policy": false,
            "token_num_uses": 0,
        });
        match json {
            Value::Object(fields) => fields,
            _ => unreachable!("a JSON object literal"),
        }
    }

    /// Names of the fields in which the role OpenBao reports differs from this
    /// one, every field when there is no role: empty means nothing to write.
    pub fn drift(&self, reported: Option<&Map<String, Value>>) -> Vec<String> {
        let fields = self.fields();
        let Some(reported) = reported else {
            return fields.into_iter().map(|(name, _)| name).collect();
        };
        let changed = fields
            .into_iter()
            .filter(|(name, want)| !same(want, reported.get(name)))
            .map(|(name, _)| name);
        let legacy = LEGACY_FIELDS
            .into_iter()
            .filter(|name| !reported.get(*name).is_none_or(is_empty))
            .map(String::from);
        changed.chain(legacy).collect()
    }
}

/// Whether a reported value means `want`. A missing or null field means its
/// empty value, and lists compare as sets: OpenBao may reorder them.
fn same(want: &Value, reported: Option<&Value>) -> bool {
    match (want, reported) {
        (_, None | Some(Value::Null)) => is_empty(want),
        (Value::Array(want), Some(Value::Array(reported))) => {
            let set =
                |list: &Vec<Value>| list.iter().map(Value::to_string).collect::<BTreeSet<_>>();
            set(want) == set(reported)
        }
        (want, Some(reported)) => want == reported,
    }
}

/// `[]`, `""`, `0`, `false`, `{}` or null: what OpenBao reports for a field never set.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// An admin client of the Vault/OpenBao server.
pub struct Vault {
    client: VaultClient,
    kv_mount: String,
    auth_mount: String,
    metrics: Arc<Metrics>,
}

impl Vault {
    /// A client for `config.address`; an `https://` address is checked
    /// against the system's roots.
    pub fn new(
        config: &VaultConfig,
        token: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Self::with_ca(config, token, None, timeout, metrics)
    }

    /// [`Vault::new`] trusting only the certificates of `ca` (PEM).
    pub fn with_ca(
        config: &VaultConfig,
        token: &str,
        ca: Option<&str>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let https = config.address.starts_with("https://");
        anyhow::ensure!(
            https || ca.is_none(),
            "vault.caSecret is set but the address {} is not https://",
            config.address
        );
        if !https {
            tracing::warn!(
                address = %config.address,
                "the Vault/OpenBao address is not https://: tokens and tenant secrets travel in clear text"
            );
        }
        let settings = VaultClientSettingsBuilder::default()
            .address(&config.address)
            .token(token)
            .timeout(Some(timeout))
            // Not VAULT_SKIP_VERIFY from the environment: the configuration decides.
            .verify(true)
            .build()?;
        let mut client = VaultClient::new(settings)?;
        if let Some(pem) = ca {
            // vaultrs reads CA bundles only from files; a reqwest client of
            // our own keeps the PEM in memory (the root file system may be read-only).
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())?;
            anyhow::ensure!(!certs.is_empty(), "vault.caSecret holds no PEM certificate");
            let http = reqwest::Client::builder()
                .tls_backend_rustls()
                .tls_certs_only(certs)
                .timeout(timeout)
                .build()?;
            client.http =
                rustify::clients::reqwest::Client::new(client.settings.address.as_str(), http);
        }
        Ok(Self {
            client,
            kv_mount: config.kv_mount.clone(),
            auth_mount: config.auth_mount.clone(),
            metrics,
        })
    }

    pub fn kv_mount(&self) -> &str {
        &self.kv_mount
    }

    /// Writes the tenant's policy unless it already reads exactly so.
    pub async fn ensure_policy(&self, names: &TenantNames) -> Result<bool, VaultError> {
        let _timer = self.metrics.backend_timer("vault", "ensure_policy");
        let desired = policy_text(&self.kv_mount, names);
        match vaultrs::sys::policy::read(&self.client, &names.vault_policy).await {
            Ok(current) if current.rules == desired => return Ok(false),
            Ok(_) | Err(ClientError::APIError { code: 404, .. }) => {}
            Err(e) => return Err(e.into()),
        }
        vaultrs::sys::policy::set(&self.client, &names.vault_policy, &desired).await?;
        self.metrics.backend_wrote("vault", 1);
        Ok(true)
    }

    /// Writes the tenant's auth role unless every field already reads as
    /// desired: one read when converged, one read and one write otherwise.
    pub async fn ensure_auth_role(&self, names: &TenantNames) -> Result<bool, VaultError> {
        let _timer = self.metrics.backend_timer("vault", "ensure_auth_role");
        let desired = AuthRole::new(names);
        // vaultrs 0.8's typed role calls neither read back `audience`,
        // `alias_name_source`, the namespace selector and the deprecated fields
        // nor write `alias_name_source`. Its KV v1 calls are plain JSON GET and
        // POST on any path through the same client (token, namespace header,
        // error mapping), so they carry the role whole without another crate.
        let mount = format!("auth/{}", self.auth_mount);
        let path = format!("role/{}", names.vault_auth_role);
        let current = match vaultrs::kv1::get_raw(&self.client, &mount, &path).await {
            Ok(response) => match response.data {
                Value::Object(fields) => Some(fields),
                _ => None,
            },
            Err(ClientError::APIError { code: 404, .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let drift = desired.drift(current.as_ref());
        if drift.is_empty() {
            return Ok(false);
        }
        match current {
            None => {
                tracing::info!(role = %names.vault_auth_role, "creating the Kubernetes-auth role")
            }
            Some(_) => {
                tracing::info!(role = %names.vault_auth_role, fields = ?drift, "repairing the Kubernetes-auth role")
            }
        }
        let fields = desired.fields();
        let body: HashMap<&str, &Value> = fields.iter().map(|(k, v)| (k.as_str(), v)).collect();
        vaultrs::kv1::set(&self.client, &mount, &path, &body).await?;
        self.metrics.backend_wrote("vault", 1);
        Ok(true)
    }

    /// Reads the secret at `path` under the tenant's prefix; `None` when absent.
    pub async fn read_secret(
        &self,
        names: &TenantNames,
        path: &str,
    ) -> Result<Option<BTreeMap<String, String>>, VaultError> {
        let _timer = self.metrics.backend_timer("vault", "read_secret");
        let full = format!("{}/{path}", names.vault_path);
        match vaultrs::kv2::read(&self.client, &self.kv_mount, &full).await {
            Ok(data) => Ok(Some(data)),
            Err(ClientError::APIError { code: 404, .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the secret at `path` under the tenant's prefix unless it already holds `data`.
    pub async fn ensure_secret(
        &self,
        names: &TenantNames,
        path: &str,
        data: &BTreeMap<String, String>,
    ) -> Result<bool, VaultError> {
        if self.read_secret(names, path).await?.as_ref() == Some(data) {
            return Ok(false);
        }
        let _timer = self.metrics.backend_timer("vault", "write_secret");
        let full = format!("{}/{path}", names.vault_path);
        vaultrs::kv2::set(&self.client, &self.kv_mount, &full, data).await?;
        self.metrics.backend_wrote("vault", 1);
        Ok(true)
    }

    /// Detaches the tenant: its auth role and policy go, its secrets stay.
    pub async fn detach(&self, names: &TenantNames) -> Result<(), VaultError> {
        let _timer = self.metrics.backend_timer("vault", "detach");
        for result in [
            vaultrs::auth::kubernetes::role::delete(
                &self.client,
                &self.auth_mount,
                &names.vault_auth_role,
            )
            .await,
            vaultrs::sys::policy::delete(&self.client, &names.vault_policy).await,
        ] {
            match result {
                Ok(()) | Err(ClientError::APIError { code: 404, .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.metrics.backend_wrote("vault", 2);
        Ok(())
    }

    /// Deletes every version of every secret under the tenant's prefix.
    pub async fn delete_secrets(&self, names: &TenantNames) -> Result<(), VaultError> {
        let _timer = self.metrics.backend_timer("vault", "delete_secrets");
        let mut pending = vec![names.vault_path.clone()];
        while let Some(dir) = pending.pop() {
            let keys = match vaultrs::kv2::list(&self.client, &self.kv_mount, &dir).await {
                Ok(keys) => keys,
                Err(ClientError::APIError { code: 404, .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            for key in keys {
                let path = format!("{dir}/{}", key.trim_end_matches('/'));
                if key.ends_with('/') {
                    pending.push(path);
                } else {
                    vaultrs::kv2::delete_metadata(&self.client, &self.kv_mount, &path).await?;
                    self.metrics.backend_wrote("vault", 1);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_reads_only_the_tenants_paths() {
        let names = TenantNames::new("acme", None);
        let text = policy_text("secret", &names);
        assert!(
            text.contains("path \"secret/data/tenants/acme/*\""),
            "{text}"
        );
        assert!(text.contains("capabilities = [\"read\"]"));
        assert!(!text.contains("update") && !text.contains("create") && !text.contains("delete"));
        assert_eq!(text.matches("path ").count(), 2);
    }

    fn acme() -> AuthRole {
        AuthRole::new(&TenantNames::new("acme", Some("acme-ns")))
    }

    /// What OpenBao 2.x reports for a role written with `acme().fields()`.
    fn converged() -> Map<String, Value> {
        serde_json::from_value(json!({
            "alias_name_source": "serviceaccount_uid",
            "audience": "vault",
            "bound_service_account_names": ["tenant-workload"],
            "bound_service_account_namespace_selector": "",
            "bound_service_account_namespaces": ["acme-ns"],
            "token_bound_cidrs": [],
            "token_explicit_max_ttl": 0,
            "token_max_ttl": 14400,
            "token_no_default_policy": false,
            "token_num_uses": 0,
            "token_period": 0,
            "token_policies": ["tenant-acme"],
            "token_strictly_bind_ip": false,
            "token_ttl": 3600,
            "token_type": "service"
        }))
        .unwrap()
    }

    fn drift_after(changes: Value) -> Vec<String> {
        let mut reported = converged();
        reported.extend(serde_json::from_value::<Map<String, Value>>(changes).unwrap());
        acme().drift(Some(&reported))
    }

    #[test]
    fn the_auth_role_admits_only_the_workload_account_of_the_tenant_namespace() {
        let role = acme();
        assert_eq!(role.service_accounts, vec!["tenant-workload".to_string()]);
        assert_eq!(role.namespaces, vec!["acme-ns".to_string()]);
        assert_eq!(role.audience, AUDIENCE);
        assert_eq!(role.policies, vec!["tenant-acme".to_string()]);
        let fields = role.fields();
        assert_eq!(fields["token_ttl"], json!(3600));
        assert_eq!(fields["token_period"], json!(0));
        assert_eq!(
            fields["bound_service_account_namespace_selector"],
            json!("")
        );
    }

    #[test]
    fn a_converged_role_needs_no_write() {
        assert_eq!(acme().drift(Some(&converged())), Vec::<String>::new());
    }

    #[test]
    fn fields_never_set_read_as_their_empty_value() {
        let mut reported = converged();
        reported.remove("token_bound_cidrs");
        reported.remove("bound_service_account_namespace_selector");
        reported.insert("token_num_uses".into(), Value::Null);
        reported.insert("period".into(), json!(0));
        assert_eq!(acme().drift(Some(&reported)), Vec::<String>::new());
    }

    #[test]
    fn a_missing_role_is_written_whole() {
        assert_eq!(acme().drift(None).len(), acme().fields().len());
    }

    #[test]
    fn a_periodic_role_is_rewritten() {
        assert_eq!(
            drift_after(json!({"token_period": 86400})),
            ["token_period"]
        );
        assert_eq!(drift_after(json!({"period": 86400})), ["period"]);
    }

    #[test]
    fn an_extra_policy_is_rewritten() {
        assert_eq!(
            drift_after(json!({"token_policies": ["tenant-acme", "admin"]})),
            ["token_policies"]
        );
        assert_eq!(drift_after(json!({"policies": ["admin"]})), ["policies"]);
        assert_eq!(
            drift_after(json!({"token_no_default_policy": true})),
            ["token_no_default_policy"]
        );
    }

    #[test]
    fn a_wildcard_service_account_is_rewritten() {
        assert_eq!(
            drift_after(json!({"bound_service_account_names": ["*"]})),
            ["bound_service_account_names"]
        );
        assert_eq!(
            drift_after(json!({"bound_service_account_names": ["tenant-workload", "*"]})),
            ["bound_service_account_names"]
        );
    }

    #[test]
    fn widened_or_prolonged_tokens_are_rewritten() {
        for (change, field) in [
            (json!({"audience": ""}), "audience"),
            (
                json!({"bound_service_account_namespaces": ["acme-ns", "other"]}),
                "bound_service_account_namespaces",
            ),
            (
                json!({"bound_service_account_namespace_selector": "{\"matchLabels\":{}}"}),
                "bound_service_account_namespace_selector",
            ),
            (json!({"token_ttl": 86400}), "token_ttl"),
            (json!({"token_max_ttl": 0}), "token_max_ttl"),
            (
                json!({"token_explicit_max_ttl": 60}),
                "token_explicit_max_ttl",
            ),
            (json!({"token_type": "batch"}), "token_type"),
            (
                json!({"token_bound_cidrs": ["10.0.0.0/8"]}),
                "token_bound_cidrs",
            ),
            (json!({"token_num_uses": 5}), "token_num_uses"),
            (
                json!({"alias_name_source": "serviceaccount_name"}),
                "alias_name_source",
            ),
            (json!({"ttl": 7200}), "ttl"),
        ] {
            assert_eq!(drift_after(change), [field]);
        }
    }

    #[test]
    fn lists_compare_as_sets() {
        let mut role = acme();
        role.policies = vec!["b".into(), "a".into()];
        let mut reported = converged();
        reported.insert("token_policies".into(), json!(["a", "b"]));
        assert_eq!(role.drift(Some(&reported)), Vec::<String>::new());
    }
}
