//! Errors of the CopilotDeployment controller. Each has a fixed category,
//! used as the Event reason, the condition reason and the metric label.

use crate::backends::postgres::PostgresError;
use crate::backends::vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kubernetes(#[from] kube::Error),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error("Postgres: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// The knowledge table holds embeddings of another dimension.
    #[error("{0}")]
    DimensionsChanged(String),
    /// An object of the copilot's name exists that the copilot does not own.
    #[error("{0}")]
    NameConflict(String),
    /// The model key could not be read (the store failed, not the key is missing).
    #[error("reading the model key ({what}): {source}")]
    ModelKeyUnreadable {
        what: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("{0}")]
    NoTenant(String),
    #[error("waiting: {0}")]
    TenantNotReady(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
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
            Self::Database(e) if unavailable(e) => "PostgresUnavailable",
            Self::Database(_) => "PostgresError",
            Self::DimensionsChanged(_) => "DimensionsChangeRefused",
            Self::NameConflict(_) => "NameConflict",
            Self::ModelKeyUnreadable { source, .. } => match source.downcast_ref::<VaultError>() {
                Some(VaultError::Unavailable(_)) => "VaultUnavailable",
                Some(VaultError::Refused { .. }) => "VaultRefused",
                None => "ModelKeyUnreadable",
            },
            Self::NoTenant(_) => "NoTenant",
            Self::TenantNotReady(_) => "TenantNotReady",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "FinalizerError",
            },
        }
    }

    /// Errors a retry cannot fix: only a change of the spec (or of what
    /// someone else put in the namespace or the schema) can.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::DimensionsChanged(_)
                | Self::NameConflict(_)
                | Self::NoTenant(_)
                | Self::Postgres(PostgresError::UnknownBackend(_))
        )
    }

    /// The message for conditions and Events: the cause chain, at most 1 KiB.
    pub fn message(&self) -> String {
        crate::error_chain::message(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_permanent_and_waiting_is_not() {
        assert!(Error::DimensionsChanged("x".into()).is_permanent());
        assert!(Error::NameConflict("x".into()).is_permanent());
        assert!(!Error::TenantNotReady("x".into()).is_permanent());
        assert_eq!(
            Error::DimensionsChanged("x".into()).reason(),
            "DimensionsChangeRefused"
        );
    }

    #[test]
    fn an_unreadable_store_names_its_own_category() {
        let refused = Error::ModelKeyUnreadable {
            what: "OpenBao secret/tenants/a/models/m field k".into(),
            source: VaultError::Refused {
                code: 403,
                errors: "permission denied".into(),
            }
            .into(),
        };
        assert_eq!(refused.reason(), "VaultRefused");
        assert!(refused.message().contains("permission denied"));
        let other = Error::ModelKeyUnreadable {
            what: "Secret n/s key k".into(),
            source: anyhow::anyhow!("not UTF-8"),
        };
        assert_eq!(other.reason(), "ModelKeyUnreadable");
    }
}
