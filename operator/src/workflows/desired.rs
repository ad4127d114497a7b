//! What a tenant's n8n objects should be: its credentials (from its own
//! Postgres role and Redis user) and one workflow per enabled template.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::engine::{Engine, TOKEN_HEADER};
use super::names;
use super::templates::Template;
use crate::api::tenant::WorkflowTemplate;
use crate::backends::n8n::WorkflowBody;

/// How the tenant reaches its Postgres schema.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresAccess {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub role: String,
    pub password: String,
    pub schema: String,
    /// The server is reached over TLS.
    pub tls: bool,
}

/// How the tenant reaches its Redis.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAccess {
    pub host: String,
    pub port: u16,
    /// The ACL user (Shared mode); `default` of its own Redis otherwise.
    pub user: String,
    pub password: String,
    /// Prefix of every key the tenant may use (empty for a Dedicated Redis).
    pub key_prefix: String,
    pub tls: bool,
}

/// The tenant as its workflows see it. `Debug` never prints a password.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantView {
    pub tenant: String,
    pub postgres: PostgresAccess,
    pub redis: RedisAccess,
}

impl std::fmt::Debug for TenantView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantView")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// What a credential is for; also the placeholder stem of its id and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Purpose {
    Postgres,
    Redis,
    Webhook,
}

impl Purpose {
    pub const ALL: [Purpose; 3] = [Purpose::Postgres, Purpose::Redis, Purpose::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "Postgres",
            Self::Redis => "Redis",
            Self::Webhook => "Webhook",
        }
    }

    fn placeholder(self) -> &'static str {
        match self {
            Self::Postgres => "POSTGRES",
            Self::Redis => "REDIS",
            Self::Webhook => "WEBHOOK",
        }
    }

    /// n8n's credential type.
    pub fn n8n_type(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::Webhook => "httpHeaderAuth",
        }
    }
}

/// One credential the tenant's workflows use. `Debug` omits its data.
#[derive(Clone, PartialEq)]
pub struct DesiredCredential {
    pub purpose: Purpose,
    /// Named after its content's fingerprint: new content, new credential.
    pub name: String,
    pub data: Value,
}

impl std::fmt::Debug for DesiredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredCredential")
            .field("purpose", &self.purpose)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The tenant's three credentials.
pub fn credentials(engine: &Engine, view: &TenantView) -> Vec<DesiredCredential> {
    let pg = &view.postgres;
    let redis = &view.redis;
    let mut redis_data = json!({
        "host": redis.host, "port": redis.port, "database": 0,
        "user": redis.user, "password": redis.password, "ssl": redis.tls,
    });
    if redis.tls {
        redis_data["disableTlsVerification"] = json!(false);
    }
    let data = [
        (
            Purpose::Postgres,
            json!({
                "host": pg.host, "port": pg.port, "database": pg.database,
                "user": pg.role, "password": pg.password,
                "ssl": if pg.tls { "require" } else { "disable" },
                "allowUnauthorizedCerts": false, "sshTunnel": false,
            }),
        ),
        (Purpose::Redis, redis_data),
        (
            Purpose::Webhook,
            json!({ "name": TOKEN_HEADER, "value": engine.webhook_token(&view.tenant) }),
        ),
    ];
    data.into_iter()
        .map(|(purpose, data)| DesiredCredential {
            purpose,
            name: names::credential(
                &view.tenant,
                &purpose.as_str().to_ascii_lowercase(),
                &engine.fingerprint(&data),
            ),
            data,
        })
        .collect()
}

/// A credential as n8n holds it: its id and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRef {
    pub id: String,
    pub name: String,
}

/// The tenant's workflow made from `template`, using the credentials `refs`.
pub fn workflow(
    template: &Template,
    view: &TenantView,
    refs: &BTreeMap<Purpose, CredentialRef>,
) -> Result<WorkflowBody, String> {
    let tenant = view.tenant.as_str();
    let mut bindings: BTreeMap<&str, String> = BTreeMap::from([
        ("TENANT", tenant.to_string()),
        ("SCHEMA", view.postgres.schema.clone()),
        ("KEY_PREFIX", view.redis.key_prefix.clone()),
        ("VERSION", template.version.to_string()),
        ("WEBHOOK_PATH", names::webhook_path(tenant, template.kind)),
        (
            "WEBHOOK_ID",
            names::webhook_id(tenant, template.kind, "trigger"),
        ),
        (
            "WAIT_WEBHOOK_ID",
            names::webhook_id(tenant, template.kind, "wait"),
        ),
    ]);
    let keys = [
        ("POSTGRES_CREDENTIAL_ID", "POSTGRES_CREDENTIAL_NAME"),
        ("REDIS_CREDENTIAL_ID", "REDIS_CREDENTIAL_NAME"),
        ("WEBHOOK_CREDENTIAL_ID", "WEBHOOK_CREDENTIAL_NAME"),
    ];
    for (purpose, (id_key, name_key)) in Purpose::ALL.into_iter().zip(keys) {
        debug_assert!(id_key.starts_with(purpose.placeholder()));
        if let Some(r) = refs.get(&purpose) {
            bindings.insert(id_key, r.id.clone());
            bindings.insert(name_key, r.name.clone());
        }
    }
    let rendered = template.render(&bindings)?;
    Ok(WorkflowBody {
        name: names::workflow(tenant, &template.title),
        nodes: rendered["nodes"].as_array().cloned().unwrap_or_default(),
        connections: rendered["connections"].clone(),
        settings: rendered
            .get("settings")
            .cloned()
            .unwrap_or_else(|| json!({})),
    })
}

/// The webhook path of the tenant's workflow of `template`, if a webhook starts it.
pub fn webhook_path(template: &Template, tenant: &str) -> Option<String> {
    template
        .has_webhook()
        .then(|| names::webhook_path(tenant, template.kind))
}

/// Which template a workflow name belongs to, among `templates`.
pub fn template_of<'a>(
    name: &str,
    tenant: &str,
    templates: impl IntoIterator<Item = &'a Template>,
) -> Option<WorkflowTemplate> {
    templates
        .into_iter()
        .find(|t| names::workflow(tenant, &t.title) == name)
        .map(|t| t.kind)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::workflows::templates::Catalog;
    use std::time::Duration;

    pub(crate) fn engine() -> Engine {
        Engine::new(
            "http://127.0.0.1:5678",
            "k",
            None,
            Duration::from_secs(1),
            Catalog::embedded(),
            None,
        )
        .unwrap()
    }

    pub(crate) fn view(tenant: &str, password: &str) -> TenantView {
        TenantView {
            tenant: tenant.into(),
            postgres: PostgresAccess {
                host: "127.0.0.1".into(),
                port: 5432,
                database: "postgres".into(),
                role: format!("ptn_{tenant}"),
                password: password.into(),
                schema: format!("ptn_{tenant}"),
                tls: false,
            },
            redis: RedisAccess {
                host: "127.0.0.1".into(),
                port: 6379,
                user: format!("ptn:{tenant}"),
                password: password.into(),
                key_prefix: format!("ptn:{tenant}:"),
                tls: false,
            },
        }
    }

    pub(crate) fn refs(tenant: &str) -> BTreeMap<Purpose, CredentialRef> {
        Purpose::ALL
            .into_iter()
            .map(|p| {
                (
                    p,
                    CredentialRef {
                        id: format!("{tenant}-{}", p.as_str()),
                        name: format!("{tenant} {}", p.as_str()),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn credentials_are_the_tenants_own() {
        let e = engine();
        let creds = credentials(&e, &view("acme", "pw"));
        let pg = &creds[0];
        assert_eq!(pg.purpose, Purpose::Postgres);
        assert_eq!(pg.data["user"], "ptn_acme");
        assert_eq!(creds[1].data["user"], "ptn:acme");
        assert_eq!(creds[2].data["name"], TOKEN_HEADER);
        assert!(!format!("{creds:?}").contains("pw"), "Debug hides the data");
    }

    #[test]
    fn a_rotated_password_renames_the_credential() {
        let e = engine();
        let before = credentials(&e, &view("acme", "one"));
        let after = credentials(&e, &view("acme", "two"));
        assert_ne!(before[0].name, after[0].name);
        assert_ne!(before[1].name, after[1].name);
        assert_eq!(
            before[2].name, after[2].name,
            "the webhook token did not change"
        );
    }

    #[test]
    fn workflows_use_only_the_given_credentials_and_names() {
        let e = engine();
        let t = e
            .catalog
            .get(WorkflowTemplate::SlaBreachEscalation)
            .unwrap();
        let body = workflow(t, &view("acme", "pw"), &refs("acme")).unwrap();
        assert_eq!(body.name, "acme: SLA-breach escalation");
        let text = serde_json::to_string(&body).unwrap();
        assert!(
            text.contains("acme-Postgres")
                && text.contains("acme-Redis")
                && text.contains("acme-Webhook")
        );
        assert!(text.contains("partnerplane/acme/sla-breach-escalation"));
        assert!(text.contains("ptn:acme:escalations"));
        assert!(!text.contains("pw"), "passwords live in credentials only");
        assert_eq!(
            template_of(&body.name, "acme", [t]),
            Some(WorkflowTemplate::SlaBreachEscalation)
        );
        assert_eq!(template_of(&body.name, "other", [t]), None);
    }
}
