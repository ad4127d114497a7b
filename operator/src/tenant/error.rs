//! Errors of the tenant controller. Each has a fixed category, used as the
//! Event reason, the condition reason and the metric label.

use crate::backends::n8n::N8nError;
use crate::backends::postgres::PostgresError;
use crate::backends::redis::RedisError;
use crate::backends::vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kubernetes(#[from] kube::Error),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Workflows(#[from] N8nError),
    #[error("{0}")]
    InvalidSpec(String),
    #[error("{0}")]
    NamespaceNotOwned(String),
    #[error("{0}")]
    BackendNotConfigured(String),
    /// A part of the tenant is not ready; keeps that part's category.
    #[error("{message}")]
    NotReady {
        reason: &'static str,
        message: String,
        permanent: bool,
    },
    #[error("waiting for {0}")]
    Waiting(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
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
            Self::Redis(_) => "RedisUnavailable",
            Self::Vault(VaultError::Unavailable(_)) => "VaultUnavailable",
            Self::Vault(VaultError::Refused { .. }) => "VaultRefused",
            Self::Workflows(e) => e.reason(),
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::NamespaceNotOwned(_) => "NamespaceNotOwned",
            Self::BackendNotConfigured(_) => "BackendNotConfigured",
            Self::NotReady { reason, .. } => reason,
            Self::Waiting(_) => "Waiting",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "FinalizerError",
            },
        }
    }

    /// Errors a retry cannot fix: only a spec change can.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::InvalidSpec(_)
                | Self::NamespaceNotOwned(_)
                | Self::BackendNotConfigured(_)
                | Self::NotReady {
                    permanent: true,
                    ..
                }
                | Self::Postgres(PostgresError::UnknownBackend(_))
        ) || matches!(self, Self::Finalizer(inner) if matches!(inner.as_ref(),
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) if e.is_permanent()))
    }

    /// The message for conditions and Events: the cause chain, at most 1 KiB.
    pub fn message(&self) -> String {
        crate::error_chain::message(self)
    }
}
