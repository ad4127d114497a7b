//! `partnerplane explain -f PIPELINE.yaml`: the SQL each metric compiles to,
//! so a partner manager or auditor sees exactly how a score is computed.

use crate::api::pipeline::MetricPipelineSpec;
use crate::pipeline::sql::{SqlError, compile};

/// A readable listing of every metric's SQL.
pub fn explain(spec: &MetricPipelineSpec) -> Result<String, SqlError> {
    compile::check(spec)?;
    compile::explain(spec)
}
