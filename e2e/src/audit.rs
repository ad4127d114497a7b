//! The API server's audit log (the test bed records every write request at
//! Metadata level): which client wrote what, and when.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;

use serde_json::Value;

use crate::Testbed;

/// The audit log from the moment [`AuditLog::mark`] was called.
pub struct AuditLog {
    path: PathBuf,
    offset: u64,
}

/// One completed write request.
#[derive(Debug, Clone)]
pub struct Write {
    /// `stageTimestamp` (RFC 3339, UTC, microseconds: sorts as text).
    pub at: String,
    pub user_agent: String,
    pub verb: String,
    pub uri: String,
    pub code: u16,
}

impl AuditLog {
    /// Marks the log's current end; later reads see only what follows.
    pub fn mark(testbed: &Testbed) -> anyhow::Result<Self> {
        let path = testbed.audit_log.clone();
        let offset = std::fs::metadata(&path)?.len();
        Ok(Self { path, offset })
    }

    /// The writes since the mark whose user agent satisfies `agent`.
    pub fn writes(&self, agent: impl Fn(&str) -> bool) -> anyhow::Result<Vec<Write>> {
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|e| e["stage"] == "ResponseComplete")
            .filter(|e| e["userAgent"].as_str().is_some_and(&agent))
            .map(|e| {
                let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
                Write {
                    at: s(&e["stageTimestamp"]),
                    user_agent: s(&e["userAgent"]),
                    verb: s(&e["verb"]),
                    uri: s(&e["requestURI"]),
                    code: e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                }
            })
            .collect())
    }
}

/// Whether `user_agent` is the operator's (`partnerplane/<version> (<identity>)`).
pub fn is_operator(user_agent: &str) -> bool {
    user_agent.starts_with("partnerplane/")
}

/// Whether a write changes state rather than asking the API server about
/// the caller (`SelfSubjectReview`, `SelfSubjectAccessReview` are creates).
pub fn changes_state(write: &Write) -> bool {
    !write.uri.starts_with("/apis/authentication.k8s.io/")
        && !write.uri.starts_with("/apis/authorization.k8s.io/")
}
