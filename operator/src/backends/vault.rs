//! Vault/OpenBao: per-tenant KV v2 paths, a policy that reads only them, and
//! a Kubernetes-auth role bound to the tenant namespace's service accounts.
//!
//! Each write is preceded by a read and skipped when nothing differs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::config::VaultConfig;
use crate::metrics::Metrics;
use crate::naming::TenantNames;

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

/// The desired Kubernetes-auth role of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRole {
    pub service_accounts: Vec<String>,
    pub namespaces: Vec<String>,
    pub policies: Vec<String>,
}

impl AuthRole {
    /// Every service account of the tenant namespace, holding the tenant's policy.
    pub fn new(names: &TenantNames) -> Self {
        Self {
            service_accounts: vec!["*".into()],
            namespaces: vec![names.namespace.clone()],
            policies: vec![names.vault_policy.clone()],
        }
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
    pub fn new(
        config: &VaultConfig,
        token: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let settings = VaultClientSettingsBuilder::default()
            .address(&config.address)
            .token(token)
            .timeout(Some(timeout))
            .build()?;
        Ok(Self {
            client: VaultClient::new(settings)?,
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

    /// Writes the tenant's auth role unless it is already bound so.
    pub async fn ensure_auth_role(&self, names: &TenantNames) -> Result<bool, VaultError> {
        let _timer = self.metrics.backend_timer("vault", "ensure_auth_role");
        let desired = AuthRole::new(names);
        match vaultrs::auth::kubernetes::role::read(
            &self.client,
            &self.auth_mount,
            &names.vault_auth_role,
        )
        .await
        {
            Ok(current)
                if current.bound_service_account_names == desired.service_accounts
                    && current.bound_service_account_namespaces == desired.namespaces
                    && current.token_policies == desired.policies =>
            {
                return Ok(false);
            }
            Ok(_) | Err(ClientError::APIError { code: 404, .. }) => {}
            Err(e) => return Err(e.into()),
        }
        vaultrs::auth::kubernetes::role::create(
            &self.client,
            &self.auth_mount,
            &names.vault_auth_role,
            Some(
                CreateKubernetesRoleRequest::builder()
                    .bound_service_account_names(desired.service_accounts)
                    .bound_service_account_namespaces(desired.namespaces)
                    .token_policies(desired.policies)
                    .token_ttl("1h"),
            ),
        )
        .await?;
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

    #[test]
    fn the_auth_role_is_bound_to_the_tenant_namespace_only() {
        let role = AuthRole::new(&TenantNames::new("acme", Some("acme-ns")));
        assert_eq!(role.namespaces, vec!["acme-ns".to_string()]);
        assert_eq!(role.policies, vec!["tenant-acme".to_string()]);
    }
}
