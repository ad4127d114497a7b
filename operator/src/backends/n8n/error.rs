//! Errors talking to n8n. Messages name n8n and its address, never the API
//! key or a request body (credential bodies carry passwords).

#[derive(Debug, Clone, thiserror::Error)]
pub enum N8nError {
    /// No answer, or an answer saying n8n cannot serve now (5xx).
    #[error("n8n at {url} is unavailable: {message}")]
    Unavailable { url: String, message: String },
    /// n8n answered and refused the request.
    #[error("n8n at {url} refused to {operation}: HTTP {status}: {message}")]
    Refused {
        url: String,
        operation: &'static str,
        status: u16,
        message: String,
    },
}

impl N8nError {
    /// Stable, low-cardinality category.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "N8nUnavailable",
            Self::Refused { status: 401, .. } | Self::Refused { status: 403, .. } => {
                "N8nUnauthorized"
            }
            Self::Refused { .. } => "N8nRefused",
        }
    }
}
