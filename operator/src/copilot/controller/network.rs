//! Where a copilot's pods may connect, as NetworkPolicy rules (pure).
//!
//! In: the tenant namespace's pods and the namespaces the tenant admits
//! (`spec.network.allowFromNamespaces`), on the server's port. Out: the
//! cluster DNS, the tenant's Postgres backend, OpenBao when the pod logs in
//! there itself, and the model endpoint — nothing else. Backends are
//! allowed at their literal address, or at `--backend-cidrs` when named by
//! a host name, as the tenant's own policies do. A model endpoint named by
//! a host name cannot be pinned by a NetworkPolicy (it follows no DNS
//! name): a cluster Service name (`*.svc`) allows that namespace, any other
//! name allows the endpoint's port on public addresses only, never the
//! cluster's private ranges.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::context::Cidr;

/// Namespace and pod labels of the cluster DNS (CoreDNS keeps kube-dns's label).
const DNS_NAMESPACE: &str = "kube-system";
const DNS_POD_LABEL: (&str, &str) = ("k8s-app", "kube-dns");

/// Private, loopback, link-local and shared address space: never "the
/// internet" a model endpoint named by a host name may live on.
const NOT_PUBLIC_V4: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
];
const NOT_PUBLIC_V6: [&str; 2] = ["fc00::/7", "fe80::/10"];

/// One destination a copilot talks to: a host (address or name) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: u16,
}

impl Destination {
    /// The host and port of a URL (`https://host:port/…`), default ports by scheme.
    pub fn from_url(url: &str) -> Option<Self> {
        let uri: http::Uri = url.parse().ok()?;
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        let default = if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        };
        Some(Self {
            host: host.to_string(),
            port: uri.port_u16().unwrap_or(default),
        })
    }
}

/// What the copilot's NetworkPolicy is derived from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// The tenant's Postgres backend, and OpenBao when the pod reads from it.
    pub backends: Vec<Destination>,
    /// Blocks holding the backends named by a host name.
    pub backend_cidrs: Vec<Cidr>,
    pub model: Option<Destination>,
    /// Namespaces besides the copilot's own whose pods may call it.
    pub allow_from_namespaces: Vec<String>,
    pub port: u16,
}

fn namespace_selector(namespace: &str) -> Value {
    json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}})
}

/// The policy's `ingress` rules.
pub fn ingress(reach: &Reach) -> Vec<Value> {
    let mut from = vec![json!({"podSelector": {}})];
    from.extend(
        reach
            .allow_from_namespaces
            .iter()
            .map(|ns| namespace_selector(ns)),
    );
    vec![json!({"from": from, "ports": [{"protocol": "TCP", "port": reach.port}]})]
}

/// The namespace of a cluster Service name (`name.namespace.svc[.cluster.local]`).
fn service_namespace(host: &str) -> Option<&str> {
    let trimmed = host
        .trim_end_matches('.')
        .strip_suffix(".cluster.local")
        .unwrap_or(host.trim_end_matches('.'));
    let rest = trimmed.strip_suffix(".svc")?;
    let (_, namespace) = rest.rsplit_once('.')?;
    (!namespace.is_empty()).then_some(namespace)
}

/// The policy's `egress` rules.
pub fn egress(reach: &Reach) -> Vec<Value> {
    let mut rules = vec![json!({
        "to": [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": DNS_NAMESPACE}},
            "podSelector": {"matchLabels": {DNS_POD_LABEL.0: DNS_POD_LABEL.1}},
        }],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    })];
    // One rule per port, listing every block served on it.
    let mut by_port: BTreeMap<u16, Vec<Cidr>> = BTreeMap::new();
    for backend in &reach.backends {
        match backend.host.parse::<IpAddr>() {
            Ok(address) => by_port
                .entry(backend.port)
                .or_default()
                .push(Cidr::host(address)),
            Err(_) => by_port
                .entry(backend.port)
                .or_default()
                .extend(reach.backend_cidrs.iter().copied()),
        }
    }
    for (port, mut cidrs) in by_port {
        cidrs.sort();
        cidrs.dedup();
        if cidrs.is_empty() {
            continue;
        }
        let to: Vec<Value> = cidrs
            .iter()
            .map(|c| json!({"ipBlock": {"cidr": c.to_string()}}))
            .collect();
        rules.push(json!({"to": to, "ports": [{"protocol": "TCP", "port": port}]}));
    }
    if let Some(model) = &reach.model {
        rules.push(model_rule(model));
    }
    rules
}

fn model_rule(model: &Destination) -> Value {
    let port = json!([{"protocol": "TCP", "port": model.port}]);
    if let Ok(address) = model.host.parse::<IpAddr>() {
        return json!({"to": [{"ipBlock": {"cidr": Cidr::host(address).to_string()}}], "ports": port});
    }
    if let Some(namespace) = service_namespace(&model.host) {
        // A Service's port is translated to its pods' before the policy
        // applies, so the namespace is allowed on any port.
        return json!({"to": [namespace_selector(namespace)]});
    }
    json!({
        "to": [
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": NOT_PUBLIC_V4}},
            {"ipBlock": {"cidr": "::/0", "except": NOT_PUBLIC_V6}},
        ],
        "ports": port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(model: &str) -> Reach {
        Reach {
            backends: vec![
                Destination {
                    host: "10.0.0.5".into(),
                    port: 5432,
                },
                Destination {
                    host: "bao.vault.svc".into(),
                    port: 8200,
                },
            ],
            backend_cidrs: vec![],
            model: Destination::from_url(model),
            allow_from_namespaces: vec!["ingress".into()],
            port: 8080,
        }
    }

    #[test]
    fn urls_give_host_and_port_with_scheme_defaults() {
        assert_eq!(
            Destination::from_url("https://llm.example/v1"),
            Some(Destination {
                host: "llm.example".into(),
                port: 443
            })
        );
        assert_eq!(
            Destination::from_url("http://[fd00::1]:8000/v1").unwrap(),
            Destination {
                host: "fd00::1".into(),
                port: 8000
            }
        );
        assert_eq!(
            Destination::from_url("http://10.1.2.3/v1").unwrap().port,
            80
        );
    }

    #[test]
    fn egress_reaches_dns_the_backends_and_the_model_only() {
        let rules = egress(&reach("http://10.9.9.9:8000/v1"));
        assert_eq!(rules.len(), 3, "{rules:#?}");
        assert_eq!(
            rules[0]["to"][0]["podSelector"]["matchLabels"]["k8s-app"],
            "kube-dns"
        );
        assert_eq!(
            rules[1],
            json!({"to": [{"ipBlock": {"cidr": "10.0.0.5/32"}}], "ports": [{"protocol": "TCP", "port": 5432}]})
        );
        assert_eq!(
            rules[2],
            json!({"to": [{"ipBlock": {"cidr": "10.9.9.9/32"}}], "ports": [{"protocol": "TCP", "port": 8000}]})
        );
        // No rule without destinations: a port alone would mean any address.
        for rule in &rules {
            assert!(
                rule["to"].as_array().is_some_and(|to| !to.is_empty()),
                "{rule}"
            );
        }
    }

    #[test]
    fn named_backends_use_the_configured_blocks() {
        let mut r = reach("http://10.9.9.9:8000/v1");
        r.backend_cidrs = vec!["10.96.0.0/12".parse().unwrap()];
        let rules = egress(&r);
        assert!(rules.contains(
            &json!({"to": [{"ipBlock": {"cidr": "10.96.0.0/12"}}], "ports": [{"protocol": "TCP", "port": 8200}]})
        ));
    }

    #[test]
    fn a_named_model_endpoint_is_public_addresses_on_its_port_or_a_service_namespace() {
        let public = egress(&reach("https://llm.msp.example/v1"));
        let rule = public.last().unwrap();
        assert_eq!(rule["ports"], json!([{"protocol": "TCP", "port": 443}]));
        assert_eq!(rule["to"][0]["ipBlock"]["cidr"], "0.0.0.0/0");
        assert!(
            rule["to"][0]["ipBlock"]["except"]
                .as_array()
                .unwrap()
                .contains(&json!("10.0.0.0/8"))
        );
        let in_cluster = egress(&reach("http://vllm.models.svc.cluster.local:8000/v1"));
        assert_eq!(
            in_cluster.last().unwrap(),
            &json!({"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "models"}}}]})
        );
        assert_eq!(service_namespace("vllm.models.svc"), Some("models"));
        assert_eq!(service_namespace("llm.example"), None);
    }

    #[test]
    fn ingress_admits_the_namespace_and_the_tenants_allowed_namespaces_on_the_port() {
        assert_eq!(
            ingress(&reach("https://x.example")),
            vec![json!({"from": [
                {"podSelector": {}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}},
            ], "ports": [{"protocol": "TCP", "port": 8080}]})]
        );
    }
}
