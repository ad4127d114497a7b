//! The parts of n8n's API objects the operator reads and writes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A workflow as n8n returns it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub nodes: Vec<Value>,
    #[serde(default)]
    pub connections: Value,
    #[serde(default)]
    pub settings: Value,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// What creating or replacing a workflow sends: n8n refuses read-only fields.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkflowBody {
    pub name: String,
    pub nodes: Vec<Value>,
    pub connections: Value,
    pub settings: Value,
}

/// A workflow tag.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tag {
    pub id: String,
    pub name: String,
}

/// What n8n answers to a created credential (never its data).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct CreatedCredential {
    pub id: String,
    pub name: String,
}

/// One page of a list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Page<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}
