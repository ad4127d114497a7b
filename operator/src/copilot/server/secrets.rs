//! The copilot's two secrets, read once at start-up: the tenant's database
//! credentials and the model API key. Each comes from the environment (a
//! Secret the Deployment maps in) or from OpenBao, logged in to with the
//! pod's ServiceAccount token through the tenant's Kubernetes-auth role.
//! Neither is ever logged, audited or put in an error message.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};

use crate::copilot::server_config::{
    DatabaseCredentials, MODEL_KEY_ENV, ModelKey, ServerConfig, VaultKey,
};

/// Where Kubernetes mounts the pod's ServiceAccount token.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The tenant's Postgres connection settings.
#[derive(Clone)]
pub struct DbCredentials {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: String,
    /// `PGSSLMODE`, when given.
    pub sslmode: Option<String>,
}

impl std::fmt::Debug for DbCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCredentials")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("sslmode", &self.sslmode)
            .finish()
    }
}

impl DbCredentials {
    /// From `PGHOST`, `PGPORT`, `PGDATABASE`, `PGUSER`, `PGPASSWORD` and
    /// `PGSSLMODE` as `get` finds them.
    pub fn from_map(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let need = |key: &str| {
            get(key)
                .filter(|v| !v.is_empty())
                .with_context(|| format!("{key} is not set"))
        };
        let port = match get("PGPORT").filter(|p| !p.is_empty()) {
            Some(p) => p.parse().with_context(|| "PGPORT is not a port number")?,
            None => 5432,
        };
        Ok(Self {
            host: need("PGHOST")?,
            port,
            dbname: get("PGDATABASE")
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "postgres".into()),
            user: need("PGUSER")?,
            password: need("PGPASSWORD")?,
            sslmode: get("PGSSLMODE").filter(|m| !m.is_empty()),
        })
    }
}

/// The secrets a copilot needs.
pub struct Secrets {
    pub database: DbCredentials,
    pub model_key: String,
}

/// OpenBao clients logged in so far, by (address, auth mount, role).
#[derive(Default)]
struct Logins {
    clients: Vec<((String, String, String), VaultClient)>,
}

impl Logins {
    async fn client(
        &mut self,
        key: &VaultKey,
        token_path: &Path,
        timeout: Duration,
    ) -> anyhow::Result<&VaultClient> {
        let id = (
            key.address.clone(),
            key.auth_mount.clone(),
            key.auth_role.clone(),
        );
        if let Some(i) = self.clients.iter().position(|(k, _)| *k == id) {
            return Ok(&self.clients[i].1);
        }
        reqwest::Url::parse(&key.address)
            .with_context(|| format!("the OpenBao address {:?} is not a URL", key.address))?;
        let jwt = std::fs::read_to_string(token_path).with_context(|| {
            format!("reading the ServiceAccount token {}", token_path.display())
        })?;
        // The CA comes from VAULT_CACERT when set; the token never from the environment.
        let settings = VaultClientSettingsBuilder::default()
            .address(&key.address)
            .token("")
            .timeout(Some(timeout))
            .verify(true)
            .build()?;
        let mut client = VaultClient::new(settings)?;
        let login =
            vaultrs::auth::kubernetes::login(&client, &key.auth_mount, &key.auth_role, jwt.trim())
                .await
                .with_context(|| {
                    format!(
                        "logging in to OpenBao at {} with role {} (mount {})",
                        key.address, key.auth_role, key.auth_mount
                    )
                })?;
        client.set_token(&login.client_token);
        tracing::info!(address = %key.address, role = %key.auth_role, "logged in to OpenBao");
        self.clients.push((id, client));
        Ok(&self.clients.last().expect("just pushed").1)
    }

    async fn read(
        &mut self,
        key: &VaultKey,
        token_path: &Path,
        timeout: Duration,
    ) -> anyhow::Result<HashMap<String, String>> {
        let client = self.client(key, token_path, timeout).await?;
        vaultrs::kv2::read(client, &key.kv_mount, &key.path)
            .await
            .with_context(|| format!("reading {}/{} from OpenBao", key.kv_mount, key.path))
    }
}

/// Reads both secrets as `config` says.
pub async fn resolve(
    config: &ServerConfig,
    token_path: &Path,
    timeout: Duration,
) -> anyhow::Result<Secrets> {
    let mut logins = Logins::default();
    let database = match &config.database.credentials {
        DatabaseCredentials::Env => DbCredentials::from_map(|k| std::env::var(k).ok())
            .context("database credentials from the environment")?,
        DatabaseCredentials::Vault(key) => {
            let map = logins.read(key, token_path, timeout).await?;
            DbCredentials::from_map(|k| map.get(k).cloned())
                .with_context(|| format!("database credentials in {}", key.path))?
        }
    };
    let model_key = match &config.model.key {
        ModelKey::Env => std::env::var(MODEL_KEY_ENV)
            .ok()
            .filter(|k| !k.is_empty())
            .with_context(|| format!("{MODEL_KEY_ENV} is not set"))?,
        ModelKey::Vault(key) => logins
            .read(key, token_path, timeout)
            .await?
            .remove(&key.field)
            .filter(|k| !k.is_empty())
            .with_context(|| format!("no field {} in {}", key.field, key.path))?,
    };
    Ok(Secrets {
        database,
        model_key: model_key.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_a_map() {
        let map: HashMap<&str, &str> = HashMap::from([
            ("PGHOST", "db"),
            ("PGPORT", "6432"),
            ("PGUSER", "tenant_acme"),
            ("PGPASSWORD", "pw"),
            ("PGSSLMODE", "verify-full"),
        ]);
        let c = DbCredentials::from_map(|k| map.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.dbname.as_str()),
            ("db", 6432, "postgres")
        );
        assert_eq!(c.sslmode.as_deref(), Some("verify-full"));
        assert!(!format!("{c:?}").contains("\"pw\""));
        let missing = DbCredentials::from_map(|k| (k == "PGHOST").then(|| "db".into()));
        assert!(missing.unwrap_err().to_string().contains("PGUSER"));
    }
}
