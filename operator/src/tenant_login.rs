//! The password of a tenant's own Postgres login, for the work the
//! pipeline and copilot controllers do in its schema as that login (see
//! [`crate::backends::postgres::Postgres::tenant_session`]). It is read
//! where the tenant controller keeps it: Vault/OpenBao when the tenant uses
//! it, else (or when that holds none) the namespace's credentials Secret.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::api::PartnerTenant;
use crate::context::Context;
use crate::credentials::Credentials;
use crate::naming::{self, TenantNames};
use crate::tenant::children;
use crate::tenant::reconcile::{VAULT_CREDENTIALS, names_of, stores_in_vault};
use crate::tenant::secret_access;

/// Where one tenant's credentials are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialStore {
    tenant: String,
    /// Boxed: most of what a resolved owner carries, read only here.
    names: Box<TenantNames>,
    /// Vault/OpenBao first.
    vault: bool,
}

impl CredentialStore {
    pub fn of(tenant: &PartnerTenant) -> Self {
        Self {
            tenant: tenant.name_any(),
            names: Box::new(names_of(tenant)),
            vault: stores_in_vault(tenant),
        }
    }

    /// The tenant's Postgres password, or why it cannot be had. Never logs
    /// or returns the password in a message.
    pub async fn postgres_password(&self, ctx: &Context) -> Result<String, String> {
        let from_map = |map: &BTreeMap<String, String>| {
            Credentials::from_map(map).map(|c| c.postgres_password)
        };
        let mut why = vec![];
        if self.vault {
            match ctx.vault.read_secret(&self.names, VAULT_CREDENTIALS).await {
                Ok(Some(map)) => match from_map(&map) {
                    Some(password) => return Ok(password),
                    None => why.push("Vault/OpenBao holds no usable password".to_string()),
                },
                Ok(None) => why.push("Vault/OpenBao holds none".to_string()),
                Err(e) => why.push(format!("Vault/OpenBao cannot be read: {e}")),
            }
        }
        let namespace = &self.names.namespace;
        match secret_access::get(ctx, namespace, naming::CREDENTIALS_SECRET).await {
            Ok(Some(secret)) if children::tenant_of(&secret).as_deref() == Some(&self.tenant) => {
                match from_map(&crate::credentials::secret_text(secret)) {
                    Some(password) => return Ok(password),
                    None => why.push(format!(
                        "Secret {namespace}/{} holds no usable password",
                        naming::CREDENTIALS_SECRET
                    )),
                }
            }
            Ok(_) => why.push(format!(
                "no Secret {namespace}/{} of this tenant",
                naming::CREDENTIALS_SECRET
            )),
            Err(e) => why.push(format!(
                "Secret {namespace}/{} cannot be read: {e}",
                naming::CREDENTIALS_SECRET
            )),
        }
        Err(format!(
            "the Postgres password of tenant {} cannot be read: {}",
            self.tenant,
            why.join("; ")
        ))
    }
}
