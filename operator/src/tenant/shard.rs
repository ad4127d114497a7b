//! Sharding by `--tenant-selector`: a tenant's objects carry the tenant's
//! values of the labels the selector reads, so the shard's watches of those
//! objects can use the same selector and hold only its own tenants' objects
//! (N shards cost N × 1/N of the memory, not N × all).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use kube::ResourceExt;

use crate::api::PartnerTenant;

/// The label keys the process's selector reads; set once at start-up.
static KEYS: OnceLock<Vec<String>> = OnceLock::new();

/// Records the selector this process serves (`None`: every tenant).
pub fn serve(selector: Option<&str>) {
    let _ = KEYS.set(selector.map(keys).unwrap_or_default());
}

/// The label keys a label selector reads (`a=b,c in (d,e),!f` → a, c, f).
pub fn keys(selector: &str) -> Vec<String> {
    let mut keys = vec![];
    let mut depth = 0usize;
    let mut start = 0;
    let mut requirements = vec![];
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                requirements.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    requirements.push(&selector[start..]);
    for requirement in requirements {
        let requirement = requirement.trim().trim_start_matches('!').trim_start();
        let end = requirement
            .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '('))
            .unwrap_or(requirement.len());
        let key = &requirement[..end];
        if !key.is_empty() && !keys.iter().any(|k| k == key) {
            keys.push(key.to_string());
        }
    }
    keys
}

/// The tenant's own values of the labels `keys` names.
pub fn labels_for(tenant: &PartnerTenant, keys: &[String]) -> BTreeMap<String, String> {
    let labels = tenant.labels();
    keys.iter()
        .filter_map(|k| Some((k.clone(), labels.get(k)?.clone())))
        .collect()
}

/// [`labels_for`] the selector this process serves.
pub fn labels(tenant: &PartnerTenant) -> BTreeMap<String, String> {
    labels_for(tenant, KEYS.get().map(Vec::as_slice).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_keys_of_every_requirement_form() {
        assert_eq!(keys("partnerplane.io/shard=a"), ["partnerplane.io/shard"]);
        assert_eq!(
            keys("tier in (gold, silver),region!=eu, !legacy ,team,env==prod"),
            ["tier", "region", "legacy", "team", "env"]
        );
        assert_eq!(keys("a notin (x,y),a=b"), ["a"]);
        assert!(keys("").is_empty());
    }

    #[test]
    fn copies_only_the_selected_labels_the_tenant_has() {
        let spec = serde_yaml::from_str("displayName: Acme").unwrap();
        let mut tenant = PartnerTenant::new("acme", spec);
        tenant.metadata.labels = Some(BTreeMap::from([
            ("partnerplane.io/shard".to_string(), "blue".to_string()),
            (
                "app.kubernetes.io/instance".to_string(),
                "argo-app".to_string(),
            ),
        ]));
        let keys = keys("partnerplane.io/shard=blue,!legacy");
        assert_eq!(
            labels_for(&tenant, &keys),
            BTreeMap::from([("partnerplane.io/shard".to_string(), "blue".to_string())])
        );
    }
}
