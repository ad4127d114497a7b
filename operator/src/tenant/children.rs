//! The Kubernetes objects of a tenant, as pure functions of its spec.
//!
//! No object carries an owner reference to the PartnerTenant: deleting the
//! tenant, its CRD or a finalizer by hand must never let the garbage collector
//! take a tenant's namespace, credentials or Redis. Objects are found by label
//! and annotation instead; `Delete` removes them explicitly.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::ownership::{self, Origin};
use crate::api::PartnerTenant;
use crate::api::tenant::{NetworkIsolation, Tier};
use crate::context::BackendEgress;
use crate::naming::{self, TenantNames};

pub use super::dedicated_redis::{
    DEDICATED_REDIS, DEDICATED_REDIS_SECRET, dedicated_redis_service, dedicated_redis_statefulset,
};

/// Labels shared by every object of a tenant.
pub fn labels(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/managed-by".into(), "partnerplane".into()),
        ("app.kubernetes.io/part-of".into(), "partnerplane".into()),
        (naming::TENANT_LABEL.into(), naming::label_value(tenant)),
    ])
}

/// [`labels`], and the tenant's values of the labels the shard's selector
/// reads (see [`super::shard`]): the labels of every object of the tenant.
pub fn tenant_labels(tenant: &PartnerTenant) -> BTreeMap<String, String> {
    let mut all = super::shard::labels(tenant);
    all.extend(labels(&tenant.name_any()));
    all
}

/// Label selector of everything the operator manages.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=partnerplane";
/// Annotation with the tenant's full name (labels are limited to 63 characters).
pub const TENANT_ANNOTATION: &str = ownership::TENANT_NAME;

pub(crate) fn build<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("built objects match their types")
}

pub(crate) fn metadata(tenant: &PartnerTenant, names: &TenantNames, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": names.namespace,
        "labels": tenant_labels(tenant),
        "annotations": {TENANT_ANNOTATION: tenant.name_any()},
    })
}

/// The tenant namespace, with Pod Security admission guard rails and the
/// record of whose it is (see [`ownership`]).
pub fn namespace(tenant: &PartnerTenant, names: &TenantNames, origin: Origin) -> Namespace {
    let mut labels = tenant_labels(tenant);
    labels.insert(
        "pod-security.kubernetes.io/enforce".into(),
        "baseline".into(),
    );
    labels.insert(
        "pod-security.kubernetes.io/warn".into(),
        "restricted".into(),
    );
    build(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": names.namespace,
            "labels": labels,
            "annotations": {
                ownership::TENANT_NAME: tenant.name_any(),
                ownership::TENANT_UID: tenant.uid().unwrap_or_default(),
                ownership::ORIGIN: origin.as_str(),
            },
        }
    }))
}

/// Quota of the tier, with the spec's overrides.
pub fn resource_quota(tenant: &PartnerTenant, names: &TenantNames) -> ResourceQuota {
    let (cpu, memory, pods, storage) = match tenant.spec.tier {
        Tier::Starter => ("4", "8Gi", 20, "50Gi"),
        Tier::Standard => ("16", "32Gi", 100, "200Gi"),
        Tier::Enterprise => ("64", "128Gi", 500, "1Ti"),
    };
    let quotas = tenant.spec.quotas.clone().unwrap_or_default();
    let quantity = |q: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
                    default: &str| {
        q.map(|q| q.0).unwrap_or_else(|| default.to_string())
    };
    build(json!({
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": metadata(tenant, names, "tenant-quota"),
        "spec": {"hard": {
            "requests.cpu": quantity(quotas.cpu, cpu),
            "requests.memory": quantity(quotas.memory, memory),
            "pods": quotas.pods.unwrap_or(pods).to_string(),
            "requests.storage": quantity(quotas.storage, storage),
        }}
    }))
}

/// Default requests and limits, so pods without them still fit the quota.
pub fn limit_range(tenant: &PartnerTenant, names: &TenantNames) -> LimitRange {
    build(json!({
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": metadata(tenant, names, "tenant-limits"),
        "spec": {"limits": [{
            "type": "Container",
            "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
            "default": {"cpu": "1", "memory": "1Gi"},
        }]}
    }))
}

/// Namespace and pod labels of the cluster DNS (CoreDNS keeps kube-dns's label).
const DNS_NAMESPACE: &str = "kube-system";
const DNS_POD_LABEL: (&str, &str) = ("k8s-app", "kube-dns");

/// Network policies: `default-deny` denies everything in both directions,
/// stated with explicit empty rule lists; `allow-tenant-traffic` then lets
/// in the tenant's own pods and the namespaces the spec names, and lets out
/// only to the tenant's own pods, the cluster DNS and each shared backend's
/// address block on its port — never a port to anywhere.
pub fn network_policies(
    tenant: &PartnerTenant,
    names: &TenantNames,
    backends: &BackendEgress,
) -> Vec<NetworkPolicy> {
    if tenant.spec.network.isolation == NetworkIsolation::Open {
        return vec![];
    }
    let mut from = vec![json!({"podSelector": {}})];
    for ns in &tenant.spec.network.allow_from_namespaces {
        from.push(
            json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.0}}}),
        );
    }
    let dns = json!({
        "to": [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": DNS_NAMESPACE}},
            "podSelector": {"matchLabels": {DNS_POD_LABEL.0: DNS_POD_LABEL.1}},
        }],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    });
    let mut egress = vec![json!({"to": [{"podSelector": {}}]}), dns];
    // One rule per port, listing every block served on it.
    let mut by_port: BTreeMap<u16, Vec<Value>> = BTreeMap::new();
    for (cidr, port) in &backends.targets {
        by_port
            .entry(*port)
            .or_default()
            .push(json!({"ipBlock": {"cidr": cidr.to_string()}}));
    }
    egress.extend(
        by_port
            .into_iter()
            .map(|(port, to)| json!({"to": to, "ports": [{"protocol": "TCP", "port": port}]})),
    );
    vec![
        build(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata(tenant, names, "default-deny"),
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": [],
            }
        })),
        build(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata(tenant, names, "allow-tenant-traffic"),
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": from}],
                "egress": egress,
            }
        })),
    ]
}

/// The identity of the tenant's workloads (also what logs in to Vault/OpenBao).
pub fn service_account(tenant: &PartnerTenant, names: &TenantNames) -> ServiceAccount {
    build(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(tenant, names, naming::WORKLOAD_SERVICE_ACCOUNT),
    }))
}

/// What tenant workloads may do: read their own namespace's configuration.
pub fn role(tenant: &PartnerTenant, names: &TenantNames) -> Role {
    build(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(tenant, names, naming::WORKLOAD_SERVICE_ACCOUNT),
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps", "pods", "services", "endpoints"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [naming::CREDENTIALS_SECRET], "verbs": ["get"]},
        ]
    }))
}

pub fn role_binding(tenant: &PartnerTenant, names: &TenantNames) -> RoleBinding {
    build(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(tenant, names, naming::WORKLOAD_SERVICE_ACCOUNT),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": naming::WORKLOAD_SERVICE_ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": naming::WORKLOAD_SERVICE_ACCOUNT, "namespace": names.namespace}],
    }))
}

/// A Secret of the operator's making in the tenant namespace.
pub fn secret(
    tenant: &PartnerTenant,
    names: &TenantNames,
    name: &str,
    data: &BTreeMap<String, String>,
) -> Secret {
    let data: BTreeMap<String, ByteString> = data
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let mut secret: Secret = build(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(tenant, names, name),
        "type": "Opaque",
    }));
    secret.data = Some(data);
    secret
}

/// Namespace of an object's owner tenant, if the object names one.
pub fn tenant_of<K: Resource>(object: &K) -> Option<String> {
    object.annotations().get(TENANT_ANNOTATION).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PartnerTenantSpec;

    fn tenant(yaml: &str) -> PartnerTenant {
        let spec: PartnerTenantSpec = serde_yaml::from_str(yaml).unwrap();
        let mut t = PartnerTenant::new("acme", spec);
        t.metadata.uid = Some("uid-1".into());
        t
    }

    #[test]
    fn the_namespace_has_no_owner_and_records_whose_it_is() {
        let t = tenant("displayName: Acme");
        let ns = namespace(&t, &TenantNames::new("acme", None), Origin::Created);
        assert!(ns.metadata.owner_references.is_none());
        assert_eq!(ns.metadata.name.as_deref(), Some("ptn-acme"));
        assert_eq!(ns.labels()[naming::TENANT_LABEL], "acme");
        assert_eq!(ns.annotations()[ownership::TENANT_UID], "uid-1");
        assert_eq!(ns.annotations()[ownership::ORIGIN], "created");
    }

    #[test]
    fn nothing_inside_can_be_garbage_collected_through_the_tenant() {
        let t = tenant("displayName: Acme");
        let names = TenantNames::new("acme", None);
        let creds = secret(&t, &names, naming::CREDENTIALS_SECRET, &BTreeMap::new());
        assert!(creds.metadata.owner_references.is_none());
        assert!(
            resource_quota(&t, &names)
                .metadata
                .owner_references
                .is_none()
        );
        assert_eq!(tenant_of(&creds).as_deref(), Some("acme"));
    }

    #[test]
    fn quota_follows_the_tier_and_the_overrides() {
        let t = tenant("displayName: Acme\ntier: Starter\nquotas: {pods: 7}");
        let hard = resource_quota(&t, &TenantNames::new("acme", None))
            .spec
            .unwrap()
            .hard
            .unwrap();
        assert_eq!(hard["pods"].0, "7");
        assert_eq!(hard["requests.cpu"].0, "4");
    }

    fn backends() -> BackendEgress {
        let endpoints = crate::context::Endpoints {
            postgres: BTreeMap::from([(
                "default".to_string(),
                BTreeMap::from([
                    ("PGHOST".to_string(), "10.0.0.5".to_string()),
                    ("PGPORT".to_string(), "5432".to_string()),
                ]),
            )]),
            redis_host: "redis.cache.svc".into(),
            redis_port: 6379,
            vault_address: "https://[fd00::8]:8200".into(),
        };
        BackendEgress::derive(&endpoints, &["10.96.0.0/12".parse().unwrap()])
    }

    fn spec_json(policy: &NetworkPolicy) -> Value {
        serde_json::to_value(policy.spec.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn strict_isolation_denies_by_default_and_open_has_no_policy() {
        let names = TenantNames::new("acme", None);
        let strict = network_policies(&tenant("displayName: A"), &names, &backends());
        assert_eq!(strict.len(), 2);
        assert_eq!(strict[0].metadata.name.as_deref(), Some("default-deny"));
        assert_eq!(
            spec_json(&strict[0]),
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []})
        );
        let open = network_policies(
            &tenant("displayName: A\nnetwork: {isolation: Open}"),
            &names,
            &backends(),
        );
        assert!(open.is_empty());
    }

    #[test]
    fn egress_reaches_only_the_backends_the_cluster_dns_and_the_tenant() {
        let names = TenantNames::new("acme", None);
        let policies = network_policies(&tenant("displayName: A"), &names, &backends());
        let spec = spec_json(&policies[1]);
        assert!(!spec.to_string().contains("0.0.0.0/0"));
        assert!(!spec.to_string().contains("::/0"));
        let egress = spec["egress"].as_array().unwrap();
        // No rule without destinations: a port alone would mean any address.
        for rule in egress {
            assert!(
                rule["to"].as_array().is_some_and(|to| !to.is_empty()),
                "{rule}"
            );
        }
        assert_eq!(
            egress.as_slice(),
            [
                json!({"to": [{"podSelector": {}}]}),
                json!({
                    "to": [{
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                }),
                json!({"to": [{"ipBlock": {"cidr": "10.0.0.5/32"}}], "ports": [{"protocol": "TCP", "port": 5432}]}),
                json!({"to": [{"ipBlock": {"cidr": "10.96.0.0/12"}}], "ports": [{"protocol": "TCP", "port": 6379}]}),
                json!({"to": [{"ipBlock": {"cidr": "fd00::8/128"}}], "ports": [{"protocol": "TCP", "port": 8200}]}),
            ]
        );
        // Every DNS rule goes to kube-dns only.
        for rule in egress.iter().filter(|r| {
            r["ports"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["port"] == 53))
        }) {
            assert_eq!(
                rule["to"][0]["podSelector"]["matchLabels"]["k8s-app"],
                "kube-dns"
            );
        }
    }

    #[test]
    fn without_reachable_backends_only_dns_and_the_tenant_are_allowed_out() {
        let names = TenantNames::new("acme", None);
        let policies =
            network_policies(&tenant("displayName: A"), &names, &BackendEgress::default());
        assert_eq!(
            spec_json(&policies[1])["egress"].as_array().unwrap().len(),
            2
        );
    }

    #[test]
    fn ingress_admits_the_tenant_and_the_named_namespaces_only() {
        let names = TenantNames::new("acme", None);
        let t = tenant("displayName: A\nnetwork: {allowFromNamespaces: [monitoring]}");
        let policies = network_policies(&t, &names, &backends());
        assert_eq!(
            spec_json(&policies[1])["ingress"],
            json!([{"from": [
                {"podSelector": {}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
            ]}])
        );
    }

    #[test]
    fn the_limit_range_sets_defaults_within_the_quota() {
        let names = TenantNames::new("acme", None);
        let limits = limit_range(&tenant("displayName: A"), &names)
            .spec
            .unwrap()
            .limits;
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].type_, "Container");
        assert_eq!(limits[0].default_request.as_ref().unwrap()["cpu"].0, "100m");
        assert_eq!(limits[0].default.as_ref().unwrap()["memory"].0, "1Gi");
    }

    #[test]
    fn quota_overrides_are_kept_as_written_and_match_the_canonical_form() {
        let t = tenant("displayName: A\nquotas: {memory: 1024Mi, cpu: 2000m, storage: 1024Gi}");
        let quota = resource_quota(&t, &TenantNames::new("acme", None));
        let hard = quota.spec.as_ref().unwrap().hard.as_ref().unwrap();
        assert_eq!(hard["requests.memory"].0, "1024Mi");
        // What the API server stores instead is not drift.
        let desired = serde_json::to_value(&quota).unwrap();
        let mut live = desired.clone();
        live["spec"]["hard"]["requests.memory"] = json!("1Gi");
        live["spec"]["hard"]["requests.cpu"] = json!("2");
        live["spec"]["hard"]["requests.storage"] = json!("1Ti");
        assert!(crate::apply::is_subset(&desired, &live));
    }

    #[test]
    fn the_workload_role_reads_only_its_own_credentials_secret() {
        let r = role(&tenant("displayName: A"), &TenantNames::new("acme", None));
        let secrets = r
            .rules
            .unwrap()
            .into_iter()
            .find(|r| r.resources.as_ref().unwrap().contains(&"secrets".into()))
            .unwrap();
        assert_eq!(
            secrets.resource_names.unwrap(),
            vec![naming::CREDENTIALS_SECRET.to_string()]
        );
        assert_eq!(secrets.verbs, vec!["get".to_string()]);
    }
}
