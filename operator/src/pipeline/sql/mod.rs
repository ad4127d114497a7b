//! The pipeline's SQL: source tables and their change capture, the metric
//! compiler, and the incremental refresh. Everything runs inside a
//! transaction the caller opened as the tenant's role.
//!
//! The statements a refresh runs most go out with `query_typed`, parameter
//! types named: one round trip each, where `query` and `execute` on
//! statement text prepare it first (a second round trip) for statements
//! that mostly differ at every refresh anyway. It stays the extended
//! protocol, which runs exactly one statement per call.

pub mod compile;
mod derived;
pub mod horizon;
mod maintain;
pub mod names;
pub mod percentile;
pub mod refresh;
mod retention;
pub mod sources;
pub mod state;
mod tables;
mod verify;

use tokio_postgres::Transaction;

use crate::api::pipeline::MetricPipelineSpec;

pub use refresh::{MetricResult, PartnerValue, RefreshPath, RefreshReport, daily_values, refresh};
pub use sources::{Ensured, ensure};

/// Errors of the pipeline's SQL.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The spec references something the API's rules cannot check.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// A source change would lose data and the spec does not allow it.
    #[error("{message}")]
    Refused { message: String },
    #[error("Postgres: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// Identifies a pipeline's derived objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The tenant schema and role the SQL runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub schema: String,
    pub role: String,
}

/// Checks what the CRD's rules cannot: every column a metric names exists
/// with a type its use allows, and literals match their column.
pub fn check(spec: &MetricPipelineSpec) -> Result<(), SqlError> {
    compile::check(spec)
}

/// Drops the pipeline's derived tables, and its source tables when asked.
pub async fn drop_derived(
    tx: &Transaction<'_>,
    target: &Target,
    key: &PipelineKey,
    spec: &MetricPipelineSpec,
    drop_sources: bool,
) -> Result<(), SqlError> {
    sources::drop_derived(tx, target, key, spec, drop_sources).await
}
