//! Postgres: one schema and one least-privilege login role per tenant.
//!
//! The catalog is read first and only the statements that close the gap are
//! run, so a converged tenant costs one query and no DDL. Statements are built
//! by pure functions; identifiers are always quoted, and passwords travel as
//! SCRAM verifiers, never in clear text.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::config::PostgresBackendConfig;
use crate::metrics::Metrics;
use crate::naming::{TenantNames, quote_ident};

/// Schema holding shared extensions such as pgvector.
pub const EXTENSIONS_SCHEMA: &str = "extensions";
/// Group role holding what every tenant shares (CONNECT, USAGE on the
/// extensions schema). Granting through membership adds a row per tenant
/// instead of rewriting one shared ACL, which concurrent tenants would contend on.
pub const TENANT_GROUP: &str = "partnerplane_tenants";

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("Postgres backend {0:?} is not configured")]
    UnknownBackend(String),
    #[error("Postgres backend {backend:?} is unavailable: {source}")]
    Unavailable {
        backend: String,
        #[source]
        source: deadpool_postgres::PoolError,
    },
    #[error("Postgres backend {backend:?} refused a statement: {source}")]
    Statement {
        backend: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Whether a converge may set the role's password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordPolicy {
    Enforce,
    KeepExisting,
}

/// What a converge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Converged {
    pub statements: usize,
    pub password_changed: bool,
}

/// What the catalog says about one tenant.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TenantState {
    pub role_exists: bool,
    pub role_can_login: bool,
    pub schema_exists: bool,
    pub schema_owned_by_role: bool,
    pub role_in_tenant_group: bool,
    pub search_path_set: bool,
    pub function_defaults_private: bool,
}

/// The statements that bring a tenant from `state` to its desired state.
/// `verifier` is the role's SCRAM verifier; `reset_password` sets it on an
/// existing role (used when fresh credentials were generated).
pub fn plan_tenant(
    names: &TenantNames,
    state: &TenantState,
    verifier: &str,
    reset_password: bool,
) -> Vec<String> {
    let role = quote_ident(&names.role);
    let schema = quote_ident(&names.schema);
    let mut sql = vec![];
    let group = quote_ident(TENANT_GROUP);
    if !state.role_exists {
        sql.push(format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{verifier}' IN ROLE {group}"
        ));
    } else {
        if !state.role_can_login {
            sql.push(format!("ALTER ROLE {role} LOGIN"));
        }
        if reset_password {
            sql.push(format!("ALTER ROLE {role} PASSWORD '{verifier}'"));
        }
        if !state.role_in_tenant_group {
            sql.push(format!("GRANT {group} TO {role}"));
        }
    }
    if !state.schema_exists {
        sql.push(format!("CREATE SCHEMA {schema} AUTHORIZATION {role}"));
    } else if !state.schema_owned_by_role {
        sql.push(format!("ALTER SCHEMA {schema} OWNER TO {role}"));
    }
    if !state.search_path_set {
        sql.push(format!(
            "ALTER ROLE {role} SET search_path = {schema}, {}",
            quote_ident(EXTENSIONS_SCHEMA)
        ));
    }
    if !state.function_defaults_private {
        // Functions are executable by PUBLIC by default; keep the tenant's own.
        sql.push(format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {role} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC"
        ));
    }
    sql
}

/// Statements that remove a tenant's access but keep its data.
pub fn plan_disable(names: &TenantNames) -> Vec<String> {
    vec![format!("ALTER ROLE {} NOLOGIN", quote_ident(&names.role))]
}

/// Statements that remove the tenant's schema and role with everything they own.
pub fn plan_drop(names: &TenantNames) -> Vec<String> {
    let role = quote_ident(&names.role);
    vec![
        format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(&names.schema)
        ),
        format!("DROP OWNED BY {role} CASCADE"),
        format!("DROP ROLE {role}"),
    ]
}

const STATE_QUERY: &str = r#"
SELECT
  r.oid IS NOT NULL,
  coalesce(r.rolcanlogin, false),
  n.oid IS NOT NULL,
  coalesce(n.nspowner = r.oid, false),
  coalesce(pg_has_role(r.oid, $4, 'MEMBER'), false),
  coalesce(r.rolconfig @> ARRAY['search_path=' || quote_ident($2) || ', ' || quote_ident($3)], false),
  EXISTS (SELECT 1 FROM pg_default_acl d WHERE d.defaclrole = r.oid AND d.defaclobjtype = 'f' AND d.defaclnamespace = 0),
  true
FROM (SELECT 1) AS one
LEFT JOIN pg_roles r ON r.rolname = $1
LEFT JOIN pg_namespace n ON n.nspname = $2
"#;

/// The pooled connections to every configured Postgres backend.
pub struct Postgres {
    pools: BTreeMap<String, Pool>,
    prepared: tokio::sync::Mutex<HashSet<String>>,
    metrics: Arc<Metrics>,
}

impl Postgres {
    /// Builds one pool per backend; connections open lazily.
    pub fn new(
        backends: &[(PostgresBackendConfig, String)],
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut pools = BTreeMap::new();
        for (config, dsn) in backends {
            let mut pg: tokio_postgres::Config = dsn.parse()?;
            pg.connect_timeout(timeout);
            let manager = Manager::from_config(
                pg,
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            let pool = Pool::builder(manager)
                .max_size(config.max_connections)
                .wait_timeout(Some(timeout))
                .create_timeout(Some(timeout))
                .recycle_timeout(Some(timeout))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()?;
            pools.insert(config.name.clone(), pool);
        }
        Ok(Self {
            pools,
            prepared: tokio::sync::Mutex::new(HashSet::new()),
            metrics,
        })
    }

    /// Whether `backend` is configured.
    pub fn has_backend(&self, backend: &str) -> bool {
        self.pools.contains_key(backend)
    }

    async fn client(&self, backend: &str) -> Result<deadpool_postgres::Object, PostgresError> {
        let pool = self
            .pools
            .get(backend)
            .ok_or_else(|| PostgresError::UnknownBackend(backend.to_string()))?;
        pool.get()
            .await
            .map_err(|source| PostgresError::Unavailable {
                backend: backend.to_string(),
                source,
            })
    }

    async fn execute(
        &self,
        backend: &str,
        client: &deadpool_postgres::Object,
        statements: &[String],
    ) -> Result<(), PostgresError> {
        if statements.is_empty() {
            return Ok(());
        }
        // One round trip, one implicit transaction: all of it or none.
        client
            .batch_execute(&statements.join(";\n"))
            .await
            .map_err(|source| PostgresError::Statement {
                backend: backend.to_string(),
                source,
            })?;
        self.metrics
            .backend_wrote("postgres", statements.len() as u64);
        Ok(())
    }

    /// Shared set-up of a backend: the extensions schema with pgvector, and
    /// PUBLIC's rights on the database and the public schema revoked.
    pub async fn prepare(&self, backend: &str) -> Result<(), PostgresError> {
        let client = self.client(backend).await?;
        let statement_error = |source| PostgresError::Statement {
            backend: backend.to_string(),
            source,
        };
        let row = client
            .query_one(
                r#"SELECT
                     EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
                     (SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'),
                     coalesce((SELECT bool_or(a.grantee = 0) FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                               WHERE d.datname = current_database()), false),
                     coalesce((SELECT bool_or(a.grantee = 0) FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                               WHERE n.nspname = 'public'), false),
                     current_database()::text,
                     EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2),
                     coalesce((SELECT has_database_privilege(r.oid, current_database(), 'CONNECT')
                                      AND has_schema_privilege(r.oid, $1, 'USAGE')
                               FROM pg_roles r WHERE r.rolname = $2 AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)), false)"#,
                &[&EXTENSIONS_SCHEMA, &TENANT_GROUP],
            )
            .await
            .map_err(statement_error)?;
        let (has_schema, vector_home, public_db, public_schema, database): (
            bool,
            Option<String>,
            bool,
            bool,
            String,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let (has_group, group_granted): (bool, bool) = (row.get(5), row.get(6));
        let ext = quote_ident(EXTENSIONS_SCHEMA);
        let mut sql = vec![];
        if !has_schema {
            sql.push(format!("CREATE SCHEMA IF NOT EXISTS {ext}"));
        }
        // Tenants reach pgvector only through the extensions schema.
        match vector_home.as_deref() {
            None => sql.push(format!(
                "CREATE EXTENSION IF NOT EXISTS vector SCHEMA {ext}"
            )),
            Some(EXTENSIONS_SCHEMA) => {}
            Some(_) => sql.push(format!("ALTER EXTENSION vector SET SCHEMA {ext}")),
        }
        if public_db {
            sql.push(format!(
                "REVOKE ALL ON DATABASE {} FROM PUBLIC",
                quote_ident(&database)
            ));
        }
        if public_schema {
            sql.push("REVOKE ALL ON SCHEMA public FROM PUBLIC".to_string());
        }
        let group = quote_ident(TENANT_GROUP);
        if !has_group {
            sql.push(format!("CREATE ROLE {group} NOLOGIN"));
        }
        if !group_granted {
            sql.push(format!(
                "GRANT CONNECT ON DATABASE {} TO {group}",
                quote_ident(&database)
            ));
            sql.push(format!("GRANT USAGE ON SCHEMA {ext} TO {group}"));
        }
        self.execute(backend, &client, &sql).await
    }

    async fn state(
        &self,
        backend: &str,
        client: &deadpool_postgres::Object,
        names: &TenantNames,
    ) -> Result<TenantState, PostgresError> {
        let row = client
            .query_one(
                STATE_QUERY,
                &[
                    &names.role,
                    &names.schema,
                    &EXTENSIONS_SCHEMA,
                    &TENANT_GROUP,
                ],
            )
            .await
            .map_err(|source| PostgresError::Statement {
                backend: backend.to_string(),
                source,
            })?;
        let state = TenantState {
            role_exists: row.get(0),
            role_can_login: row.get(1),
            schema_exists: row.get(2),
            schema_owned_by_role: row.get(3),
            role_in_tenant_group: row.get(4),
            search_path_set: row.get(5),
            function_defaults_private: row.get(6),
        };
        Ok(state)
    }

    /// Converges the tenant's role and schema; returns the statements run.
    pub async fn ensure_tenant(
        &self,
        backend: &str,
        names: &TenantNames,
        password: &str,
        policy: PasswordPolicy,
        _tier: crate::api::tenant::Tier,
    ) -> Result<Converged, PostgresError> {
        let reset_password = policy == PasswordPolicy::Enforce;
        let _timer = self.metrics.backend_timer("postgres", "ensure_tenant");
        {
            // One preparation per backend, even when many tenants start at once.
            let mut prepared = self.prepared.lock().await;
            if !prepared.contains(backend) {
                self.prepare(backend).await?;
                prepared.insert(backend.to_string());
            }
        }
        let client = self.client(backend).await?;
        let state = self.state(backend, &client, names).await?;
        let needs_verifier = !state.role_exists || reset_password;
        let verifier = if needs_verifier {
            postgres_protocol::password::scram_sha_256(password.as_bytes())
        } else {
            String::new()
        };
        let sql = plan_tenant(names, &state, &verifier, reset_password);
        self.execute(backend, &client, &sql).await?;
        Ok(Converged {
            statements: sql.len(),
            password_changed: false,
        })
    }

    /// Disables the tenant's login and ends its sessions; data stays.
    pub async fn disable_tenant(
        &self,
        backend: &str,
        names: &TenantNames,
    ) -> Result<(), PostgresError> {
        let _timer = self.metrics.backend_timer("postgres", "disable_tenant");
        let client = self.client(backend).await?;
        let state = self.state(backend, &client, names).await?;
        if state.role_exists && state.role_can_login {
            self.execute(backend, &client, &plan_disable(names)).await?;
        }
        if state.role_exists {
            self.terminate_sessions(backend, &client, names).await?;
        }
        Ok(())
    }

    /// Drops the tenant's schema and role, ending its sessions first.
    pub async fn drop_tenant(
        &self,
        backend: &str,
        names: &TenantNames,
    ) -> Result<(), PostgresError> {
        let _timer = self.metrics.backend_timer("postgres", "drop_tenant");
        let client = self.client(backend).await?;
        let state = self.state(backend, &client, names).await?;
        if state.role_exists {
            self.execute(backend, &client, &plan_disable(names)).await?;
            self.terminate_sessions(backend, &client, names).await?;
            self.execute(backend, &client, &plan_drop(names)).await?;
        } else if state.schema_exists {
            let drop = format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_ident(&names.schema)
            );
            self.execute(backend, &client, &[drop]).await?;
        }
        Ok(())
    }

    async fn terminate_sessions(
        &self,
        backend: &str,
        client: &deadpool_postgres::Object,
        names: &TenantNames,
    ) -> Result<(), PostgresError> {
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                &[&names.role],
            )
            .await
            .map_err(|source| PostgresError::Statement {
                backend: backend.to_string(),
                source,
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> TenantNames {
        TenantNames::new("acme", None)
    }

    #[test]
    fn a_new_tenant_gets_role_schema_and_grants() {
        let sql = plan_tenant(&names(), &TenantState::default(), "SCRAM-SHA-256$x", false);
        assert!(sql[0].starts_with("CREATE ROLE \"tenant_acme_"), "{sql:?}");
        assert!(sql[0].contains("LOGIN PASSWORD 'SCRAM-SHA-256$x'"));
        assert!(
            sql[0].ends_with("IN ROLE \"partnerplane_tenants\""),
            "{sql:?}"
        );
        assert!(
            sql.iter()
                .any(|s| s.starts_with("CREATE SCHEMA \"tenant_acme_")
                    && s.contains("AUTHORIZATION"))
        );
        assert!(sql.iter().any(|s| s.contains("search_path")));
        assert!(
            sql.iter()
                .any(|s| s.contains("ALTER DEFAULT PRIVILEGES FOR ROLE"))
        );
        assert_eq!(sql.len(), 4);
    }

    #[test]
    fn a_converged_tenant_needs_no_statement() {
        let state = TenantState {
            role_exists: true,
            role_can_login: true,
            schema_exists: true,
            schema_owned_by_role: true,
            role_in_tenant_group: true,
            search_path_set: true,
            function_defaults_private: true,
        };
        assert!(plan_tenant(&names(), &state, "", false).is_empty());
    }

    #[test]
    fn a_disabled_role_is_enabled_again_and_its_password_reset_when_asked() {
        let state = TenantState {
            role_exists: true,
            schema_exists: true,
            schema_owned_by_role: true,
            role_in_tenant_group: true,
            search_path_set: true,
            function_defaults_private: true,
            ..Default::default()
        };
        let sql = plan_tenant(&names(), &state, "SCRAM-SHA-256$y", true);
        assert_eq!(sql.len(), 2, "{sql:?}");
        assert!(sql[0].ends_with(" LOGIN"));
        assert!(sql[1].contains("PASSWORD 'SCRAM-SHA-256$y'"));
    }

    #[test]
    fn dropping_removes_what_the_role_owns_before_the_role() {
        let sql = plan_drop(&names());
        assert!(sql[0].starts_with("DROP SCHEMA IF EXISTS"));
        assert!(sql[1].starts_with("DROP OWNED BY"));
        assert!(sql[2].starts_with("DROP ROLE"));
    }
}
