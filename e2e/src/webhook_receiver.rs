//! An HTTPS webhook receiver the suites run in-process on 127.0.0.1. It
//! serves the test bed's server certificate (`e2e/.testbed/tls/`, signed by
//! the test bed CA, naming `127.0.0.1` and `localhost`), which the operator
//! trusts through `webhooks.caSecret` of the test bed configuration.
//!
//! Signatures are checked here with code of its own, so the operator's
//! signing is held to a separate reading of the Standard Webhooks
//! specification rather than to itself.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ring::hmac;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::testbed::repo_root;

/// How far a `webhook-timestamp` may be from now and still verify, as the
/// specification recommends.
const TOLERANCE_SECONDS: i64 = 300;

/// One request the receiver got.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// `webhook-id`; empty when absent.
    pub id: String,
    /// `webhook-timestamp`, when present and an integer.
    pub timestamp: Option<i64>,
    /// The body, as sent (lossily decoded when not UTF-8).
    pub body: String,
    pub content_type: Option<String>,
    pub path: String,
    /// Whether one of the `webhook-signature` entries is a valid `v1`
    /// signature of this id, timestamp and body under the secret, and the
    /// timestamp is within five minutes of now.
    pub verified: bool,
    /// The status the receiver answered.
    pub status: u16,
}

struct State {
    /// `None` when the secret given to [`Receiver::start`] is not base64:
    /// then nothing verifies.
    key: Option<hmac::Key>,
    script: Mutex<VecDeque<u16>>,
    received: Mutex<Vec<Received>>,
}

/// A running receiver; it stops when dropped.
pub struct Receiver {
    url: String,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl Receiver {
    /// Listens on a free port of 127.0.0.1, checking signatures against
    /// `secret` (`whsec_<base64>` or raw base64) and answering requests
    /// with the statuses of `script` in turn, then 200. Call it inside a
    /// Tokio runtime; panics when the test bed's certificate is missing.
    pub fn start(secret: &str, script: Vec<u16>) -> Receiver {
        Self::try_start(secret, script)
            .expect("starting the webhook receiver (is the test bed up? e2e/testbed.sh up)")
    }

    fn try_start(secret: &str, script: Vec<u16>) -> anyhow::Result<Receiver> {
        let dir = repo_root().join("e2e/.testbed/tls");
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        let chain = CertificateDer::pem_file_iter(&cert)
            .with_context(|| format!("reading {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(&key)
            .with_context(|| format!("reading {}", key.display()))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let listener = tokio::net::TcpListener::from_std(listener)?;

        let state = Arc::new(State {
            key: signing_key(secret).map(|k| hmac::Key::new(hmac::HMAC_SHA256, &k)),
            script: Mutex::new(script.into()),
            received: Mutex::new(Vec::new()),
        });
        let serving = state.clone();
        let server = tokio::spawn(async move {
            // Connections live in the set, so stopping the server ends them too.
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = serving.clone();
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request| handle(state.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Receiver {
            url: format!("https://127.0.0.1:{port}/hook"),
            state,
            server,
        })
    }

    /// The URL to deliver to (any path is accepted).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Every request so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let id = header("webhook-id").unwrap_or_default();
    let timestamp = header("webhook-timestamp");
    let verified = match (&state.key, &timestamp, header("webhook-signature")) {
        (Some(key), Some(timestamp), Some(signatures)) => {
            verify(key, &id, timestamp, &body, &signatures, now())
        }
        _ => false,
    };
    let status = state.script.lock().unwrap().pop_front().unwrap_or(200);
    state.received.lock().unwrap().push(Received {
        id,
        timestamp: timestamp.and_then(|t| t.parse().ok()),
        body: String::from_utf8_lossy(&body).into_owned(),
        content_type: header("content-type"),
        path: parts.uri.path().to_string(),
        verified,
        status,
    });
    let response = Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("the script holds valid HTTP status codes");
    Ok(response)
}

/// The HMAC key of a `whsec_<base64>` or raw base64 secret.
fn signing_key(secret: &str) -> Option<Vec<u8>> {
    let secret = secret.trim();
    STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()
        .filter(|k| !k.is_empty())
}

/// Standard Webhooks verification: the signed content is
/// `{id}.{timestamp}.{body}` with the timestamp exactly as sent; the header
/// holds space-separated `v1,<base64>` entries, any of which may match.
fn verify(
    key: &hmac::Key,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signatures: &str,
    now: i64,
) -> bool {
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return false;
    };
    if (now - seconds).abs() > TOLERANCE_SECONDS {
        return false;
    }
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    signatures.split(' ').any(|entry| {
        entry
            .strip_prefix("v1,")
            .and_then(|sig| STANDARD.decode(sig).ok())
            .is_some_and(|sig| hmac::verify(key, &content, &sig).is_ok())
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &signing_key(secret).unwrap())
    }

    #[test]
    fn verifies_the_standard_webhooks_test_vector() {
        let key = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let (id, ts, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(verify(&key, id, ts, body, good, 1614265330));
        assert!(verify(
            &key,
            id,
            ts,
            body,
            &format!("v1,bm9wZQ== {good}"),
            1614265400
        ));
        assert!(!verify(&key, id, ts, body, good, 1614265330 + 301));
        assert!(!verify(&key, "msg_other", ts, body, good, 1614265330));
        assert!(!verify(&key, id, ts, b"{\"test\": 1}", good, 1614265330));
        assert!(!verify(
            &key,
            id,
            ts,
            body,
            &good.replace("v1,", "v2,"),
            1614265330
        ));
    }
}
