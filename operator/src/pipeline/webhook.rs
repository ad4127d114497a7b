//! Signed webhook deliveries (Standard Webhooks) over HTTPS, refusing
//! loopback, link-local and cluster-internal targets unless allowed.
//!
//! Host names are resolved and checked by the client's own resolver, which
//! hands the connector only the addresses it checked: a name cannot resolve
//! to a public address for the check and to an internal one for the
//! connection. Redirects are not followed and proxies are not used, so the
//! checked address is the one connected to.

use std::error::Error as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use reqwest::StatusCode;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::redirect::Policy;
use ring::hmac;

use super::outbox::Delivery;
use crate::config::WebhookConfig;

/// How long one delivery may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryFailure {
    pub retryable: bool,
    pub message: String,
}

impl DeliveryFailure {
    fn retry(message: String) -> Self {
        Self {
            retryable: true,
            message,
        }
    }

    fn give_up(message: String) -> Self {
        Self {
            retryable: false,
            message,
        }
    }
}

/// One HTTPS client for every delivery, sharing connections and the
/// address checks of `webhooks.allow`.
pub struct WebhookClient {
    http: reqwest::Client,
    allow: Arc<Allowlist>,
}

impl WebhookClient {
    pub async fn new(config: &WebhookConfig, client: &kube::Client) -> anyhow::Result<Self> {
        let ca = match &config.ca_secret {
            Some(secret) => Some(secret.read(client).await?),
            None => None,
        };
        Self::build(&config.allow, ca.as_deref())
    }

    /// A client trusting the system's roots and the certificates of `ca` (PEM).
    fn build(allow: &[String], ca: Option<&str>) -> anyhow::Result<Self> {
        // reqwest's rustls has no provider of its own; a no-op when one is
        // already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let allow = Arc::new(Allowlist::parse(allow).context("webhooks.allow")?);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .https_only(true)
            .redirect(Policy::none())
            // A proxy would resolve the target itself, past the address check.
            .no_proxy()
            .dns_resolver(Arc::new(CheckingResolver {
                allow: allow.clone(),
            }))
            .timeout(TIMEOUT)
            .user_agent(concat!("partnerplane/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers);
        if let Some(pem) = ca {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .context("webhooks.caSecret is not PEM")?;
            anyhow::ensure!(
                !certs.is_empty(),
                "webhooks.caSecret holds no PEM certificate"
            );
            builder = builder.tls_certs_merge(certs);
        }
        Ok(Self {
            http: builder
                .build()
                .context("building the webhook HTTP client")?,
            allow,
        })
    }

    /// Sends `delivery` signed with `secret` (`whsec_…` or raw base64).
    pub async fn deliver(
        &self,
        delivery: &Delivery,
        secret: &str,
        now: Timestamp,
    ) -> Result<(), DeliveryFailure> {
        let url = target(&delivery.url)?;
        let host = url.host_str().unwrap_or_default().to_string();
        // Literal addresses never reach the resolver.
        if let Some(ip) = literal(&host)
            && let Some(reason) = self.allow.refusal(&host, &[ip])
        {
            return Err(DeliveryFailure::give_up(reason));
        }
        let timestamp = now.as_second();
        let signature = sign(secret, &delivery.id, timestamp, &delivery.body)?;
        let response = self
            .http
            .post(url)
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.body.clone().into_bytes())
            .send()
            .await
            .map_err(|e| send_failure(&host, &e))?;
        outcome(&host, response.status())
    }
}

/// The URL, when it is one a webhook may target.
fn target(url: &str) -> Result<Url, DeliveryFailure> {
    let parsed = Url::parse(url)
        .map_err(|e| DeliveryFailure::give_up(format!("the webhook URL is invalid: {e}")))?;
    if parsed.scheme() != "https" {
        return Err(DeliveryFailure::give_up(format!(
            "only https:// webhooks are delivered, not {}://",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(DeliveryFailure::give_up(
            "the webhook URL names no host".into(),
        ));
    }
    Ok(parsed)
}

/// What a response's status means for the delivery.
pub(crate) fn outcome(host: &str, status: StatusCode) -> Result<(), DeliveryFailure> {
    let message = || format!("{host} answered HTTP {status}");
    match status.as_u16() {
        200..=299 => Ok(()),
        300..=399 => Err(DeliveryFailure::give_up(format!(
            "{} (redirects are not followed)",
            message()
        ))),
        408 | 429 | 500..=599 => Err(DeliveryFailure::retry(message())),
        _ => Err(DeliveryFailure::give_up(message())),
    }
}

/// A failure to get any response. The URL is left out: it may carry a token.
fn send_failure(host: &str, error: &reqwest::Error) -> DeliveryFailure {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return DeliveryFailure::give_up(refused.0.clone());
        }
        source = cause.source();
    }
    if error.is_timeout() {
        return DeliveryFailure::retry(format!(
            "{host} did not answer within {}s",
            TIMEOUT.as_secs()
        ));
    }
    // The innermost cause says what went wrong (refused, reset, certificate).
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    DeliveryFailure::retry(format!("cannot reach {host}: {cause}"))
}

/// The `webhook-signature` header: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under the secret's key.
pub(crate) fn sign(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &str,
) -> Result<String, DeliveryFailure> {
    // Standard Webhooks secrets are base64 with or without padding; a
    // trailing newline is what `kubectl create secret --from-file` leaves.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let secret = secret.trim();
    let key = LENIENT
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()
        .filter(|key| !key.is_empty())
        .ok_or_else(|| {
            DeliveryFailure::give_up(
                "the signing secret is neither whsec_<base64> nor base64".into(),
            )
        })?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let tag = hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    ))
}

/// Targets a webhook may reach although they are internal.
#[derive(Debug, Default)]
struct Allowlist {
    /// Lower case, without a trailing dot.
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

impl Allowlist {
    /// Host names, addresses and CIDR blocks.
    fn parse(entries: &[String]) -> anyhow::Result<Self> {
        let mut allow = Self::default();
        for entry in entries {
            let entry = entry.trim();
            if let Ok(ip) = entry.parse::<IpAddr>() {
                allow.nets.push(IpNet::from(ip.to_canonical()));
            } else if entry.contains('/') {
                let net: IpNet = entry
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{entry:?} is not a CIDR block"))?;
                allow.nets.push(net.trunc());
            } else {
                anyhow::ensure!(
                    !entry.is_empty()
                        && entry
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')),
                    "{entry:?} is not a host name, an IP address or a CIDR block"
                );
                allow.hosts.push(normalize(entry));
            }
        }
        Ok(allow)
    }

    /// Why `host`, resolving to `addrs`, must not be contacted: any address
    /// internal and allowed neither by address nor by the host's name.
    fn refusal(&self, host: &str, addrs: &[IpAddr]) -> Option<String> {
        if self.hosts.contains(&normalize(host)) {
            return None;
        }
        addrs.iter().find_map(|ip| {
            let ip = ip.to_canonical();
            let kind = internal(ip)?;
            if self.nets.iter().any(|net| net.contains(&ip)) {
                return None;
            }
            Some(if literal(host).is_some() {
                format!(
                    "refused to deliver to {host}: {} {kind} address (add it to webhooks.allow to permit it)", article(kind)
                )
            } else {
                format!(
                    "refused to deliver to {host}: it resolves to {ip}, {} {kind} address (add it to webhooks.allow to permit it)", article(kind)
                )
            })
        })
    }
}

/// The address a URL's host spells out, if it is one (`[…]` for IPv6).
fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// What kind of internal address `ip` is; `None` for a public one.
/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they map.
fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(ip) => internal_v4(ip),
        IpAddr::V6(ip) => internal_v6(ip),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_loopback() {
        "loopback"
    } else if a == 0 {
        // 0.0.0.0 reaches the host itself on Linux.
        "unspecified"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if a == 100 && (64..128).contains(&b) {
        "shared (CGNAT)"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if a >= 240 {
        "reserved"
    } else {
        return None;
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    let first = segments[0];
    let [.., high, low] = segments;
    let embedded = || Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if segments[..6] == [0; 6] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d): what
        // they reach is the IPv4 address they carry.
        return internal_v4(embedded());
    } else if segments[..3] == [0x64, 0xff9b, 1] {
        "NAT64 (local use)"
    } else if ip.is_unicast_link_local() {
        "link-local"
    } else if first & 0xffc0 == 0xfec0 {
        "site-local"
    } else if ip.is_unique_local() {
        "private (unique local)"
    } else if ip.is_multicast() {
        "multicast"
    } else {
        return None;
    })
}

/// A target the allow-list does not admit; carried through reqwest's error
/// chain so the delivery is not retried.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Resolves with the system's resolver and returns the addresses only when
/// every one of them may be contacted.
struct CheckingResolver {
    allow: Arc<Allowlist>,
}

impl Resolve for CheckingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
            if let Some(reason) = allow.refusal(&host, &ips) {
                return Err(Box::new(Refused(reason)) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn allow(entries: &[&str]) -> Allowlist {
        Allowlist::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        assert_eq!(
            sign(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#,
            )
            .unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_raw_base64_secret_signs_like_its_whsec_form() {
        let body = r#"{"test": 2432232314}"#;
        let whsec = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "id", 1, body).unwrap();
        assert_eq!(
            sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n", "id", 1, body).unwrap(),
            whsec
        );
        // Padding is optional.
        assert_eq!(
            sign("whsec_YWI", "id", 1, body).unwrap(),
            sign("whsec_YWI=", "id", 1, body).unwrap()
        );
    }

    #[test]
    fn an_undecodable_secret_is_not_retried_and_not_echoed() {
        for secret in ["whsec_not base64!", "s3cr3t!", "", "whsec_"] {
            let failure = sign(secret, "id", 1, "{}").unwrap_err();
            assert!(!failure.retryable);
            let value = secret.trim_start_matches("whsec_");
            assert!(value.is_empty() || !failure.message.contains(value));
        }
    }

    #[test]
    fn internal_addresses_are_recognized() {
        for (address, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.255", "shared (CGNAT)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00::1", "private (unique local)"),
            ("fc00::1", "private (unique local)"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b:1::1", "NAT64 (local use)"),
        ] {
            assert_eq!(internal(ip(address)), Some(kind), "{address}");
        }
        for address in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(internal(ip(address)), None, "{address}");
        }
    }

    #[test]
    fn any_internal_address_refuses_the_host() {
        let none = allow(&[]);
        assert_eq!(none.refusal("example.com", &[ip("93.184.215.14")]), None);
        let reason = none
            .refusal("rebind.example", &[ip("93.184.215.14"), ip("10.0.0.7")])
            .unwrap();
        assert!(
            reason.contains("rebind.example") && reason.contains("10.0.0.7"),
            "{reason}"
        );
        assert!(
            none.refusal("127.0.0.1", &[ip("127.0.0.1")])
                .unwrap()
                .contains("loopback")
        );
    }

    #[test]
    fn the_allow_list_admits_hosts_addresses_and_blocks() {
        let list = allow(&["Receiver.Internal.", "127.0.0.1", "10.1.0.0/16", "fd00::/8"]);
        assert_eq!(list.refusal("receiver.internal", &[ip("10.9.9.9")]), None);
        assert_eq!(list.refusal("receiver.internal.", &[ip("10.9.9.9")]), None);
        assert_eq!(list.refusal("127.0.0.1", &[ip("127.0.0.1")]), None);
        assert_eq!(list.refusal("localhost", &[ip("::ffff:127.0.0.1")]), None);
        assert_eq!(list.refusal("svc", &[ip("10.1.200.3")]), None);
        assert_eq!(list.refusal("svc6", &[ip("fd12::3")]), None);
        assert!(list.refusal("other", &[ip("10.2.0.1")]).is_some());
        // Every address must pass: localhost is usually ::1 as well.
        assert!(
            list.refusal("localhost", &[ip("127.0.0.1"), ip("::1")])
                .is_some()
        );
        assert!(Allowlist::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(Allowlist::parse(&["https://x".into()]).is_err());
        assert!(Allowlist::parse(&["".into()]).is_err());
    }

    #[test]
    fn only_https_urls_are_targets() {
        assert!(target("https://example.com/hook?x=1").is_ok());
        for url in ["http://example.com/hook", "ftp://example.com", "not a url"] {
            assert!(!target(url).unwrap_err().retryable, "{url}");
        }
    }

    #[test]
    fn statuses_decide_whether_to_retry() {
        assert_eq!(outcome("h", StatusCode::OK), Ok(()));
        assert_eq!(outcome("h", StatusCode::NO_CONTENT), Ok(()));
        for code in [408, 429, 500, 502, 503, 504] {
            let failure = outcome("h", StatusCode::from_u16(code).unwrap()).unwrap_err();
            assert!(failure.retryable, "{code}");
            assert!(failure.message.contains(&code.to_string()));
        }
        for code in [301, 302, 307, 400, 401, 403, 404, 410, 413, 422] {
            assert!(
                !outcome("h", StatusCode::from_u16(code).unwrap())
                    .unwrap_err()
                    .retryable,
                "{code}"
            );
        }
    }

    fn delivery(url: String) -> Delivery {
        Delivery {
            id: "msg_1".into(),
            url,
            body: "{}".into(),
            attempts: 0,
        }
    }

    /// A local port nothing listens on.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn internal_targets_are_refused_before_connecting() {
        let client = WebhookClient::build(&[], None).unwrap();
        let port = closed_port();
        for url in [
            format!("https://localhost:{port}/hook"),
            format!("https://127.0.0.1:{port}/hook"),
            format!("https://[::1]:{port}/hook"),
            format!("https://[::ffff:127.0.0.1]:{port}/hook"),
        ] {
            let failure = client
                .deliver(&delivery(url.clone()), "whsec_YWJj", Timestamp::now())
                .await
                .unwrap_err();
            assert!(!failure.retryable, "{url}: {failure:?}");
            assert!(
                failure.message.contains("refused to deliver"),
                "{url}: {failure:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_allowed_target_that_does_not_answer_is_retried() {
        let client = WebhookClient::build(&["localhost".into(), "127.0.0.1".into()], None).unwrap();
        let port = closed_port();
        for url in [
            format!("https://localhost:{port}/hook?token=s3cr3t"),
            format!("https://127.0.0.1:{port}/hook?token=s3cr3t"),
        ] {
            let failure = client
                .deliver(&delivery(url.clone()), "whsec_YWJj", Timestamp::now())
                .await
                .unwrap_err();
            assert!(failure.retryable, "{url}: {failure:?}");
            assert!(!failure.message.contains("s3cr3t"), "{failure:?}");
        }
    }

    #[test]
    fn a_ca_that_is_not_pem_is_refused() {
        assert!(WebhookClient::build(&[], Some("not a certificate")).is_err());
    }
}
