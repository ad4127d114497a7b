//! Reading a secret value a custom resource refers to: a field under the
//! tenant's Vault/OpenBao path, or a key of a Secret in its namespace.

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::api::copilot::ApiKeyRef;
use crate::context::Context;
use crate::naming::TenantNames;

/// The value, `None` when absent or empty.
pub async fn read(
    ctx: &Context,
    namespace: &str,
    names: &TenantNames,
    r: &ApiKeyRef,
) -> anyhow::Result<Option<String>> {
    let value = match (&r.secret, &r.vault) {
        (Some(s), _) => {
            // A single GET, not the watch cache: the operator caches only
            // the Secrets it owns.
            let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
                .get_opt(&s.name)
                .await
                .with_context(|| format!("reading Secret {namespace}/{}", s.name))?;
            match secret
                .and_then(|s| s.data)
                .and_then(|mut d| d.remove(&s.key))
            {
                Some(bytes) => Some(String::from_utf8(bytes.0).with_context(|| {
                    format!("Secret {namespace}/{} key {} is not UTF-8", s.name, s.key)
                })?),
                None => None,
            }
        }
        (None, Some(v)) => ctx
            .vault
            .read_secret(names, &v.path)
            .await?
            .and_then(|mut fields| fields.remove(&v.key)),
        (None, None) => anyhow::bail!("the reference names neither a Secret nor an OpenBao path"),
    };
    Ok(value.filter(|v| !v.is_empty()))
}

/// Where the value lives, for messages (never the value).
pub fn describe(ctx: &Context, namespace: &str, names: &TenantNames, r: &ApiKeyRef) -> String {
    match (&r.secret, &r.vault) {
        (Some(s), _) => format!("Secret {namespace}/{} key {}", s.name, s.key),
        (None, Some(v)) => format!(
            "OpenBao {}/{}/{} field {}",
            ctx.vault.kv_mount(),
            names.vault_path,
            v.path,
            v.key
        ),
        (None, None) => "(no Secret or OpenBao path)".into(),
    }
}
