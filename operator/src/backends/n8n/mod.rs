//! n8n, the workflow engine, through its public REST API (`/api/v1`,
//! authenticated by `X-N8N-API-KEY`). The client only speaks the API; what
//! a tenant's workflows should be is decided in `crate::workflows`.

mod client;
mod error;
mod model;

pub use client::N8n;
pub use error::N8nError;
pub use model::{CreatedCredential, Tag, Workflow, WorkflowBody};
