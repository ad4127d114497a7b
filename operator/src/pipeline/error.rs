//! Errors of the MetricPipeline controller. Each has a fixed category, used
//! as the Event reason, the condition reason and the metric label.

use crate::backends::postgres::PostgresError;
use crate::pipeline::sql::SqlError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kubernetes(#[from] kube::Error),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error("{0}")]
    NoTenant(String),
    #[error("waiting: {0}")]
    TenantNotReady(String),
    #[error("the refresh took longer than {}s and was cancelled", .0.as_secs())]
    TimedOut(std::time::Duration),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Sql(SqlError::Database(e))
    }
}

/// Whether a database error means the server could not be reached or went
/// away, rather than that it refused a statement.
fn unavailable(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || e.code().is_none()
}

impl Error {
    /// Stable, low-cardinality category.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kubernetes(_) => "KubernetesError",
            Self::Postgres(PostgresError::UnknownBackend(_)) => "UnknownPostgresBackend",
            Self::Postgres(PostgresError::Unavailable { .. }) => "PostgresUnavailable",
            Self::Postgres(
                e @ (PostgresError::TenantLogin { .. } | PostgresError::TenantCredentials(_)),
            ) => e.login_reason().unwrap_or("PostgresError"),
            Self::Postgres(PostgresError::Statement { .. }) => "PostgresError",
            Self::Sql(SqlError::Invalid { .. }) => "InvalidSpec",
            Self::Sql(SqlError::Refused { .. }) => "SourceChangeRefused",
            Self::Sql(SqlError::Database(e)) if unavailable(e) => "PostgresUnavailable",
            Self::Sql(SqlError::Database(_)) => "PostgresError",
            Self::NoTenant(_) => "NoTenant",
            Self::TenantNotReady(_) => "TenantNotReady",
            Self::TimedOut(_) => "RefreshTimedOut",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "FinalizerError",
            },
        }
    }

    /// Errors a retry cannot fix: only a change of the spec (or of the
    /// namespace's tenant) can.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Sql(SqlError::Invalid { .. } | SqlError::Refused { .. })
                | Self::NoTenant(_)
                | Self::Postgres(PostgresError::UnknownBackend(_))
        )
    }

    /// The message for conditions and Events: the cause chain, at most 1 KiB.
    pub fn message(&self) -> String {
        crate::error_chain::message(self)
    }
}
