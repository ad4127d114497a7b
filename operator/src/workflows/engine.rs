//! The operator's n8n: its client, the templates, and the secrets derived
//! for tenants' webhooks. Derived from the API key with HMAC, they need no
//! storage of their own, cannot be computed without the key, and change
//! with it (every tenant's webhook credential then follows).

use std::time::Duration;

use base64::Engine as _;
use ring::hmac;
use serde_json::Value;

use super::templates::Catalog;
use crate::backends::n8n::N8n;

/// Header n8n asks callers of a tenant's webhooks for.
pub const TOKEN_HEADER: &str = "X-Partnerplane-Token";

/// n8n as the operator uses it.
pub struct Engine {
    pub n8n: N8n,
    pub catalog: Catalog,
    key: hmac::Key,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("n8n", &self.n8n).finish()
    }
}

impl Engine {
    /// The engine the configuration names, if any, with the templates of
    /// `templates_dir` replacing the embedded ones of the same kind.
    pub async fn from_config(
        config: Option<&crate::config::N8nConfig>,
        client: &kube::Client,
        timeout: Duration,
        templates_dir: Option<&std::path::Path>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Option<std::sync::Arc<Self>>> {
        let Some(config) = config else {
            return Ok(None);
        };
        let api_key = config.api_key_secret.read(client).await?;
        let ca = match &config.ca_secret {
            Some(secret) => Some(secret.read(client).await?),
            None => None,
        };
        let catalog = match templates_dir {
            Some(dir) => Catalog::with_overrides(dir)?,
            None => Catalog::embedded(),
        };
        let engine = Self::new(
            &config.url,
            &api_key,
            ca.as_deref(),
            timeout,
            catalog,
            Some(metrics),
        )?;
        tracing::info!(n8n = %engine.n8n.base_url(), "workflow templates go to n8n");
        Ok(Some(std::sync::Arc::new(engine)))
    }

    pub fn new(
        url: &str,
        api_key: &str,
        ca: Option<&str>,
        timeout: Duration,
        catalog: Catalog,
        metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            n8n: N8n::new(url, api_key, ca, timeout, metrics)?,
            catalog,
            key: hmac::Key::new(hmac::HMAC_SHA256, api_key.trim().as_bytes()),
        })
    }

    fn derive(&self, purpose: &str, tenant: &str) -> Vec<u8> {
        hmac::sign(&self.key, format!("{purpose}\0{tenant}").as_bytes())
            .as_ref()
            .to_vec()
    }

    /// The token the tenant's webhooks accept in [`TOKEN_HEADER`].
    pub fn webhook_token(&self, tenant: &str) -> String {
        hex::encode(self.derive("webhook-token", tenant))
    }

    /// The Standard Webhooks secret (`whsec_…`) breach deliveries to the
    /// tenant's workflows are signed with.
    pub fn signing_secret(&self, tenant: &str) -> String {
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(self.derive("signing", tenant))
        )
    }

    /// A short keyed digest of a credential's content: it names the
    /// credential without revealing what it holds.
    pub fn fingerprint(&self, data: &Value) -> String {
        let tag = hmac::sign(&self.key, format!("credential\0{data}").as_bytes());
        hex::encode(&tag.as_ref()[..4])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn engine(key: &str) -> Engine {
        Engine::new(
            "http://127.0.0.1:5678",
            key,
            None,
            Duration::from_secs(1),
            Catalog::embedded(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn derived_secrets_are_per_tenant_and_per_key() {
        let (a, b) = (engine("key-a"), engine("key-b"));
        assert_eq!(a.webhook_token("acme"), a.webhook_token("acme"));
        assert_ne!(a.webhook_token("acme"), a.webhook_token("beta"));
        assert_ne!(a.webhook_token("acme"), b.webhook_token("acme"));
        assert_ne!(a.webhook_token("acme"), a.signing_secret("acme"));
        assert!(a.signing_secret("acme").starts_with("whsec_"));
        assert!(!format!("{a:?}").contains("key-a"));
    }

    #[test]
    fn fingerprints_follow_content() {
        let e = engine("k");
        let one = json!({"user": "r", "password": "p1"});
        let two = json!({"user": "r", "password": "p2"});
        assert_eq!(e.fingerprint(&one), e.fingerprint(&one.clone()));
        assert_ne!(e.fingerprint(&one), e.fingerprint(&two));
        assert_eq!(e.fingerprint(&one).len(), 8);
    }
}
