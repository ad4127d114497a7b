//! Every name the operator derives for a tenant, in one place.
//!
//! Names are deterministic functions of the tenant's name, so a restarted
//! operator finds what it made before. Postgres truncates identifiers longer
//! than 63 bytes silently, so two long tenant names could collide there: each
//! identifier carries a hash of the full name and stays within the limit.

use sha2::{Digest, Sha256};

/// Postgres's identifier limit (NAMEDATALEN - 1).
pub const PG_IDENTIFIER_MAX: usize = 63;
/// Kubernetes namespace (DNS label) limit.
pub const NAMESPACE_MAX: usize = 63;
/// Label every object the operator makes carries, valued with the tenant's name.
pub const TENANT_LABEL: &str = "partnerplane.io/tenant";
/// ServiceAccount the tenant's workloads run as.
pub const WORKLOAD_SERVICE_ACCOUNT: &str = "tenant-workload";
/// Secret holding generated credentials (when the spec asks for one).
pub const CREDENTIALS_SECRET: &str = "partnerplane-credentials";
/// Readable part of Postgres identifiers, before the hash.
const PG_SLUG_MAX: usize = 40;

/// The names provisioned for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantNames {
    pub namespace: String,
    pub schema: String,
    pub role: String,
    pub redis_user: String,
    pub redis_key_prefix: String,
    pub vault_path: String,
    pub vault_policy: String,
    pub vault_auth_role: String,
}

impl TenantNames {
    /// Names for the tenant `name`, with `namespace` from its spec when set.
    pub fn new(name: &str, namespace: Option<&str>) -> Self {
        let hash = short_hash(name);
        let slug = pg_slug(name);
        Self {
            namespace: namespace
                .map(str::to_string)
                .unwrap_or_else(|| default_namespace(name)),
            schema: format!("tenant_{slug}_{hash}"),
            role: format!("tenant_{slug}_{hash}_app"),
            redis_user: format!("tenant-{name}"),
            redis_key_prefix: format!("t:{name}:"),
            vault_path: format!("tenants/{name}"),
            vault_policy: format!("tenant-{name}"),
            vault_auth_role: format!("tenant-{name}"),
        }
    }
}

/// `ptn-<name>`, shortened with a hash when it would exceed a DNS label.
fn default_namespace(name: &str) -> String {
    let full = format!("ptn-{name}");
    if full.len() <= NAMESPACE_MAX && !name.contains('.') {
        return full;
    }
    let head: String = name
        .replace('.', "-")
        .chars()
        .take(NAMESPACE_MAX - 15)
        .collect();
    format!("ptn-{}-{}", head.trim_end_matches('-'), short_hash(name))
}

/// Lower-case letters, digits and `_` from `name`, at most [`PG_SLUG_MAX`] bytes.
fn pg_slug(name: &str) -> String {
    let slug: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .take(PG_SLUG_MAX)
        .collect();
    slug.trim_end_matches('_').to_string()
}

/// First 10 hex digits of the SHA-256 of `name`.
fn short_hash(name: &str) -> String {
    hex::encode(&Sha256::digest(name.as_bytes())[..5])
}

/// A label value for `name`: the name itself when it fits (63 characters),
/// else a shortened form with a hash.
pub fn label_value(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let head: String = name.chars().take(63 - 11).collect();
    format!("{}-{}", head.trim_end_matches(['-', '.']), short_hash(name))
}

/// `ident` as a quoted Postgres identifier.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn valid_pg_ident(s: &str) -> bool {
        s.len() <= PG_IDENTIFIER_MAX
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }

    fn valid_dns_label(s: &str) -> bool {
        s.len() <= NAMESPACE_MAX
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn short_names_stay_readable() {
        let names = TenantNames::new("northwind-manufacturing", None);
        assert_eq!(names.namespace, "ptn-northwind-manufacturing");
        assert!(names.schema.starts_with("tenant_northwind_manufacturing_"));
        assert!(names.role.ends_with("_app"));
        assert_eq!(names.redis_key_prefix, "t:northwind-manufacturing:");
    }

    #[test]
    fn a_200_character_name_gets_valid_identifiers() {
        let name = "a".repeat(200);
        let names = TenantNames::new(&name, None);
        assert!(valid_pg_ident(&names.schema), "{}", names.schema);
        assert!(valid_pg_ident(&names.role), "{}", names.role);
        assert!(valid_dns_label(&names.namespace), "{}", names.namespace);
        assert_ne!(names.schema, names.role);
    }

    #[test]
    fn names_differing_after_byte_63_stay_distinct() {
        let base = "x".repeat(70);
        let a = TenantNames::new(&format!("{base}-a"), None);
        let b = TenantNames::new(&format!("{base}-b"), None);
        assert_ne!(a.schema, b.schema);
        assert_ne!(a.role, b.role);
        assert_ne!(a.namespace, b.namespace);
    }

    #[test]
    fn long_names_get_valid_label_values() {
        let value = label_value(&"n".repeat(200));
        assert!(value.len() <= 63);
        assert_ne!(value, label_value(&format!("{}x", "n".repeat(199))));
        assert_eq!(label_value("acme"), "acme");
    }

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote_ident("tenant_a"), "\"tenant_a\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    /// Kubernetes object names: DNS subdomains up to 253 characters.
    fn tenant_name() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?"
    }

    proptest! {
        #[test]
        fn identifiers_are_valid_for_any_tenant_name(name in tenant_name()) {
            let names = TenantNames::new(&name, None);
            prop_assert!(valid_pg_ident(&names.schema), "{}", names.schema);
            prop_assert!(valid_pg_ident(&names.role), "{}", names.role);
            prop_assert!(valid_dns_label(&names.namespace), "{}", names.namespace);
        }

        #[test]
        fn distinct_tenants_get_distinct_identifiers(a in tenant_name(), b in tenant_name()) {
            prop_assume!(a != b);
            let (x, y) = (TenantNames::new(&a, None), TenantNames::new(&b, None));
            prop_assert_ne!(x.schema, y.schema);
            prop_assert_ne!(x.role, y.role);
            prop_assert_ne!(x.namespace, y.namespace);
            prop_assert_ne!(x.redis_key_prefix, y.redis_key_prefix);
        }

        #[test]
        fn long_names_sharing_a_63_byte_prefix_stay_distinct(
            prefix in "[a-z]{63}", a in "[a-z0-9]{1,20}", b in "[a-z0-9]{1,20}"
        ) {
            prop_assume!(a != b);
            let x = TenantNames::new(&format!("{prefix}{a}"), None);
            let y = TenantNames::new(&format!("{prefix}{b}"), None);
            prop_assert_ne!(x.schema, y.schema);
            prop_assert_ne!(x.role, y.role);
        }
    }
}
