//! The HTTP client of n8n's public API.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::N8nError;
use super::model::{CreatedCredential, Page, Tag, Workflow, WorkflowBody};
use crate::metrics::Metrics;

/// Header carrying the API key.
const API_KEY_HEADER: &str = "X-N8N-API-KEY";
/// Largest page n8n serves.
const PAGE: u32 = 250;

/// A client of one n8n. `Debug` never shows the API key.
#[derive(Clone)]
pub struct N8n {
    http: reqwest::Client,
    base: Url,
    /// Latency per operation, and writes n8n accepted.
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for N8n {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("N8n")
            .field("base", &self.base.as_str())
            .finish()
    }
}

impl N8n {
    /// A client of the n8n at `url`, trusting the system's roots and the
    /// PEM certificates of `ca`.
    pub fn new(
        url: &str,
        api_key: &str,
        ca: Option<&str>,
        timeout: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut base = Url::parse(url).with_context(|| format!("n8n.url {url:?} is not a URL"))?;
        anyhow::ensure!(
            matches!(base.scheme(), "http" | "https"),
            "n8n.url must be http:// or https://"
        );
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let mut key = HeaderValue::from_str(api_key.trim())
            .context("the n8n API key is not a valid header value")?;
        key.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(API_KEY_HEADER, key);
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .user_agent(concat!("partnerplane/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers);
        if let Some(pem) = ca {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .context("n8n.caSecret is not PEM")?;
            builder = builder.tls_certs_merge(certs);
        }
        Ok(Self {
            http: builder.build().context("building the n8n HTTP client")?,
            base,
            metrics,
        })
    }

    /// n8n's base URL, as configured.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The URL of a production webhook path.
    pub fn webhook_url(&self, path: &str) -> Url {
        self.base
            .join(&format!("webhook/{path}"))
            .unwrap_or_else(|_| self.base.clone())
    }

    fn unavailable(&self, message: String) -> N8nError {
        N8nError::Unavailable {
            url: self.base.as_str().trim_end_matches('/').to_string(),
            message,
        }
    }

    /// One API call; `None` when n8n answers 404.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        operation: &'static str,
    ) -> Result<Option<T>, N8nError> {
        let url = self
            .base
            .join(&format!("api/v1/{path}"))
            .map_err(|e| self.unavailable(format!("bad API path: {e}")))?;
        let _timer = self
            .metrics
            .as_ref()
            .map(|m| m.backend_timer("n8n", operation));
        let writes = method != Method::GET;
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.unavailable(innermost(&e)))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let text = response
            .text()
            .await
            .map_err(|e| self.unavailable(innermost(&e)))?;
        if status.is_server_error() {
            return Err(self.unavailable(format!("HTTP {status}: {}", message_of(&text))));
        }
        if writes
            && status.is_success()
            && let Some(metrics) = &self.metrics
        {
            metrics.backend_wrote("n8n", 1);
        }
        if !status.is_success() {
            return Err(N8nError::Refused {
                url: self.base.as_str().trim_end_matches('/').to_string(),
                operation,
                status: status.as_u16(),
                message: message_of(&text),
            });
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| self.unavailable(format!("unexpected answer to {operation}: {e}")))
    }

    /// Every workflow carrying the tag `tag`.
    pub async fn workflows_tagged(&self, tag: &str) -> Result<Vec<Workflow>, N8nError> {
        let mut out = vec![];
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!(
                "workflows?limit={PAGE}&excludePinnedData=true&tags={}",
                urlencode(tag)
            );
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={}", urlencode(c)));
            }
            let page: Page<Workflow> = self
                .call(Method::GET, &path, None, "list workflows")
                .await?
                .unwrap_or(Page {
                    data: vec![],
                    next_cursor: None,
                });
            out.extend(page.data);
            match page.next_cursor {
                Some(next) if !next.is_empty() => cursor = Some(next),
                _ => return Ok(out),
            }
        }
    }

    pub async fn create_workflow(&self, body: &WorkflowBody) -> Result<Workflow, N8nError> {
        let body = serde_json::to_value(body).expect("serializable");
        self.call(Method::POST, "workflows", Some(&body), "create a workflow")
            .await?
            .ok_or_else(|| self.unavailable("creating a workflow answered 404".into()))
    }

    /// Replaces a workflow's definition; `None` if it is gone.
    pub async fn update_workflow(
        &self,
        id: &str,
        body: &WorkflowBody,
    ) -> Result<Option<Workflow>, N8nError> {
        let body = serde_json::to_value(body).expect("serializable");
        self.call(
            Method::PUT,
            &format!("workflows/{}", urlencode(id)),
            Some(&body),
            "update a workflow",
        )
        .await
    }

    pub async fn activate(&self, id: &str) -> Result<Option<Workflow>, N8nError> {
        self.call(
            Method::POST,
            &format!("workflows/{}/activate", urlencode(id)),
            None,
            "activate a workflow",
        )
        .await
    }

    pub async fn deactivate(&self, id: &str) -> Result<Option<Workflow>, N8nError> {
        self.call(
            Method::POST,
            &format!("workflows/{}/deactivate", urlencode(id)),
            None,
            "deactivate a workflow",
        )
        .await
    }

    /// Deletes a workflow; one already gone is done.
    pub async fn delete_workflow(&self, id: &str) -> Result<(), N8nError> {
        self.call::<Value>(
            Method::DELETE,
            &format!("workflows/{}", urlencode(id)),
            None,
            "delete a workflow",
        )
        .await?;
        Ok(())
    }

    /// Sets a workflow's tags (by tag id).
    pub async fn set_workflow_tags(&self, id: &str, tags: &[&str]) -> Result<(), N8nError> {
        let body = Value::Array(tags.iter().map(|t| json!({ "id": t })).collect());
        self.call::<Value>(
            Method::PUT,
            &format!("workflows/{}/tags", urlencode(id)),
            Some(&body),
            "tag a workflow",
        )
        .await?;
        Ok(())
    }

    /// The tag named `name`, if it exists.
    pub async fn find_tag(&self, name: &str) -> Result<Option<Tag>, N8nError> {
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("tags?limit={PAGE}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={}", urlencode(c)));
            }
            let page: Page<Tag> = self
                .call(Method::GET, &path, None, "list tags")
                .await?
                .unwrap_or(Page {
                    data: vec![],
                    next_cursor: None,
                });
            if let Some(tag) = page.data.into_iter().find(|t| t.name == name) {
                return Ok(Some(tag));
            }
            match page.next_cursor {
                Some(next) if !next.is_empty() => cursor = Some(next),
                _ => return Ok(None),
            }
        }
    }

    /// The tag named `name`, created when missing.
    pub async fn ensure_tag(&self, name: &str) -> Result<Tag, N8nError> {
        if let Some(tag) = self.find_tag(name).await? {
            return Ok(tag);
        }
        let body = json!({ "name": name });
        match self
            .call::<Tag>(Method::POST, "tags", Some(&body), "create a tag")
            .await
        {
            Ok(Some(tag)) => Ok(tag),
            // Another reconcile created it meanwhile (n8n answers 409).
            Err(N8nError::Refused { status: 409, .. }) | Ok(None) => self
                .find_tag(name)
                .await?
                .ok_or_else(|| self.unavailable(format!("tag {name} vanished"))),
            Err(e) => Err(e),
        }
    }

    pub async fn delete_tag(&self, id: &str) -> Result<(), N8nError> {
        self.call::<Value>(
            Method::DELETE,
            &format!("tags/{}", urlencode(id)),
            None,
            "delete a tag",
        )
        .await?;
        Ok(())
    }

    /// Creates a credential of `kind` holding `data`.
    pub async fn create_credential(
        &self,
        name: &str,
        kind: &str,
        data: &Value,
    ) -> Result<CreatedCredential, N8nError> {
        let body = json!({ "name": name, "type": kind, "data": data });
        match self
            .call(
                Method::POST,
                "credentials",
                Some(&body),
                "create a credential",
            )
            .await
        {
            Ok(Some(created)) => Ok(created),
            Ok(None) => Err(self.unavailable("creating a credential answered 404".into())),
            // n8n's validation message may quote the data, which holds a password.
            Err(N8nError::Refused {
                url,
                operation,
                status,
                ..
            }) => Err(N8nError::Refused {
                url,
                operation,
                status,
                message: format!("the {kind} credential {name} was not accepted"),
            }),
            Err(e) => Err(e),
        }
    }

    /// Deletes a credential; one already gone is done.
    pub async fn delete_credential(&self, id: &str) -> Result<(), N8nError> {
        self.call::<Value>(
            Method::DELETE,
            &format!("credentials/{}", urlencode(id)),
            None,
            "delete a credential",
        )
        .await?;
        Ok(())
    }

    /// Whether the credential `id` exists. The public API can neither list
    /// nor read credentials; a transfer to a project that cannot exist is
    /// refused after the credential is looked up, and the refusal says
    /// which of the two was missing. Nothing is changed either way.
    pub async fn credential_exists(&self, id: &str) -> Result<bool, N8nError> {
        let body = json!({ "destinationProjectId": "partnerplane-existence-check" });
        match self
            .call::<Value>(
                Method::PUT,
                &format!("credentials/{}/transfer", urlencode(id)),
                Some(&body),
                "look a credential up",
            )
            .await
        {
            Ok(None) => Ok(false),
            Ok(Some(_)) => Ok(true),
            Err(N8nError::Refused {
                status: 400,
                message,
                ..
            }) => Ok(!message.contains("find the credential")),
            Err(e) => Err(e),
        }
    }

    /// Posts `body` to the production webhook at `path` with `headers`;
    /// the answer's status, or why none came.
    pub async fn post_webhook(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: String,
    ) -> Result<StatusCode, String> {
        let mut request = self
            .http
            .post(self.webhook_url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request
            .send()
            .await
            .map(|r| r.status())
            .map_err(|e| innermost(&e))
    }
}

/// The `message` of an n8n error answer, else its first 200 characters.
fn message_of(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| text.chars().take(200).collect())
}

/// The innermost cause (connection refused, timeout, certificate).
fn innermost(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer in time".into();
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_give_their_message() {
        assert_eq!(message_of(r#"{"message":"not allowed"}"#), "not allowed");
        assert_eq!(message_of("plain"), "plain");
    }

    #[test]
    fn path_parts_are_encoded() {
        assert_eq!(urlencode("pp-acme.eu"), "pp-acme.eu");
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn webhook_urls_join_the_base() {
        let n8n = N8n::new(
            "http://127.0.0.1:5678",
            "k",
            None,
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        assert_eq!(
            n8n.webhook_url("partnerplane/acme/sla").as_str(),
            "http://127.0.0.1:5678/webhook/partnerplane/acme/sla"
        );
        let n8n = N8n::new(
            "https://n8n.example/base",
            "k",
            None,
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        assert_eq!(
            n8n.webhook_url("x").as_str(),
            "https://n8n.example/base/webhook/x"
        );
        assert!(format!("{n8n:?}").contains("n8n.example") && !format!("{n8n:?}").contains('k'));
    }
}
