//! The test bed's n8n as the suites read it: its public API with the
//! operator's key (workflows, executions, whether a credential exists),
//! and stopping and starting it.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::{Testbed, repo_root};

/// A client of the test bed's n8n.
#[derive(Clone)]
pub struct N8n {
    http: reqwest::Client,
    pub url: String,
    key: String,
}

impl N8n {
    pub fn new(testbed: &Testbed) -> anyhow::Result<Self> {
        let (url, key) = testbed.n8n()?;
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()?,
            url,
            key,
        })
    }

    /// An API call; `None` on 404.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Option<Value>> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}/api/v1/{path}", self.url))
            .header("X-N8N-API-KEY", &self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let text = response.text().await?;
        anyhow::ensure!(
            status.is_success(),
            "{method} {path}: HTTP {status}: {text}"
        );
        Ok(Some(serde_json::from_str(&text)?))
    }

    /// The workflows tagged `tag`.
    pub async fn workflows_tagged(&self, tag: &str) -> anyhow::Result<Vec<Value>> {
        let page = self
            .call(
                Method::GET,
                &format!("workflows?limit=250&tags={tag}"),
                None,
            )
            .await?
            .unwrap_or_else(|| json!({"data": []}));
        Ok(page["data"].as_array().cloned().unwrap_or_default())
    }

    pub async fn workflow(&self, id: &str) -> anyhow::Result<Option<Value>> {
        self.call(Method::GET, &format!("workflows/{id}"), None)
            .await
    }

    /// Saves `workflow` (as read) back after `edit` changed it, as a user
    /// editing it in n8n would.
    pub async fn edit_workflow(
        &self,
        id: &str,
        edit: impl FnOnce(&mut Value),
    ) -> anyhow::Result<()> {
        let mut w = self.workflow(id).await?.context("no such workflow")?;
        edit(&mut w);
        let body = json!({"name": w["name"], "nodes": w["nodes"], "connections": w["connections"], "settings": {"executionOrder": "v1"}});
        self.call(Method::PUT, &format!("workflows/{id}"), Some(body))
            .await?;
        Ok(())
    }

    /// Finished and failed executions of a workflow, newest first, with their data.
    pub async fn executions(&self, workflow_id: &str) -> anyhow::Result<Vec<Value>> {
        let page = self
            .call(
                Method::GET,
                &format!("executions?workflowId={workflow_id}&includeData=true&limit=50"),
                None,
            )
            .await?
            .unwrap_or_else(|| json!({"data": []}));
        Ok(page["data"].as_array().cloned().unwrap_or_default())
    }

    /// One execution with its data (waiting ones included).
    pub async fn execution(&self, id: &str) -> anyhow::Result<Option<Value>> {
        self.call(
            Method::GET,
            &format!("executions/{id}?includeData=true"),
            None,
        )
        .await
    }

    /// Whether a credential exists. The public API cannot read credentials;
    /// a transfer to a project that does not exist is refused, naming what
    /// was missing, and changes nothing.
    pub async fn credential_exists(&self, id: &str) -> anyhow::Result<bool> {
        let response = self
            .http
            .put(format!("{}/api/v1/credentials/{id}/transfer", self.url))
            .header("X-N8N-API-KEY", &self.key)
            .json(&json!({"destinationProjectId": "e2e-existence-check"}))
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        match status {
            404 => Ok(false),
            400 => Ok(!text.contains("find the credential")),
            _ => anyhow::bail!("credential lookup: HTTP {status}: {text}"),
        }
    }

    pub async fn delete_credential(&self, id: &str) -> anyhow::Result<()> {
        self.call(Method::DELETE, &format!("credentials/{id}"), None)
            .await?;
        Ok(())
    }

    /// Posts `body` to `url` (a resume URL or a webhook); the status.
    pub async fn post(&self, url: &str, body: Value) -> anyhow::Result<u16> {
        Ok(self
            .http
            .post(url)
            .json(&body)
            .send()
            .await?
            .status()
            .as_u16())
    }
}

/// The credential ids a workflow's nodes use, by credential name.
pub fn credentials_used(workflow: &Value) -> Vec<(String, String)> {
    let mut out = vec![];
    for node in workflow["nodes"].as_array().into_iter().flatten() {
        if let Some(creds) = node["credentials"].as_object() {
            for c in creds.values() {
                out.push((
                    c["id"].as_str().unwrap_or_default().to_string(),
                    c["name"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    out
}

/// The output items of node `node` in an execution's data.
pub fn node_output(execution: &Value, node: &str) -> Option<Vec<Value>> {
    let runs = execution["data"]["resultData"]["runData"][node].as_array()?;
    let items = runs.last()?["data"]["main"][0].as_array()?;
    Some(items.iter().map(|i| i["json"].clone()).collect())
}

/// Stops (`false`) or starts (`true`) the test bed's n8n.
pub fn set_running(running: bool) -> anyhow::Result<()> {
    let action = if running { "start" } else { "stop" };
    let status = std::process::Command::new(repo_root().join("e2e/testbed.sh"))
        .args(["n8n", action])
        .status()?;
    anyhow::ensure!(status.success(), "e2e/testbed.sh n8n {action} failed");
    Ok(())
}

/// Starts n8n again when dropped, so a failing suite leaves it running.
pub struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        if let Err(e) = set_running(true) {
            eprintln!("starting n8n again failed: {e}");
        }
    }
}
