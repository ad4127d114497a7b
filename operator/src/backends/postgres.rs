//! Postgres: one schema and one least-privilege login role per tenant.
//!
//! The catalog is read first and only the statements that close the gap are
//! run, so a converged tenant costs one pipelined round of catalog reads and
//! no DDL. Everything a tenant's isolation rests on is observed on every
//! converge: the backend's shared set-up, the role's attributes, limits,
//! settings and memberships, and whether its password is still the one the
//! operator handed out. Statements are built by pure functions (`plan.rs`);
//! identifiers are always quoted, and passwords travel as SCRAM verifiers,
//! never in clear text.

mod idle;
mod plan;
pub mod scram;
pub mod tls;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::api::tenant::Tier;
use crate::config::PostgresBackendConfig;
use crate::metrics::Metrics;
use crate::naming::TenantNames;

pub use plan::{
    Membership, PasswordCheck, PasswordPolicy, RoleAttributes, SharedState, TenantState,
    TierLimits, password_needs_reset, plan_disable, plan_drop, plan_shared, plan_tenant,
    tier_limits,
};

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
    #[error("{0}")]
    TenantCredentials(String),
    #[error("Postgres backend {backend:?} refused the tenant's login {role}: {source}")]
    TenantLogin {
        backend: String,
        role: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("Postgres backend {backend:?} refused a statement: {source}")]
    Statement {
        backend: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Idle tenant sessions with their server process ids.
type IdleSessions = std::sync::Mutex<idle::IdleList<(tokio_postgres::Client, i32)>>;

/// A tenant's own session ([`Postgres::tenant_session`]). Dropped, it is
/// closed; [`Self::release`]d after work that ended cleanly, it is kept
/// idle for the tenant's next work.
pub struct TenantSession<'a> {
    client: Option<tokio_postgres::Client>,
    /// Its server process.
    pid: i32,
    key: String,
    idle: &'a IdleSessions,
}

impl TenantSession<'_> {
    /// Keeps the session for the tenant's next work.
    pub fn release(mut self) {
        if let Some(client) = self.client.take().filter(|c| !c.is_closed()) {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).keep(
                std::mem::take(&mut self.key),
                (client, self.pid),
                std::time::Instant::now(),
            );
        }
    }
}

impl std::ops::Deref for TenantSession<'_> {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &Self::Target {
        self.client.as_ref().expect("present until released")
    }
}

impl std::ops::DerefMut for TenantSession<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.client.as_mut().expect("present until released")
    }
}

impl PostgresError {
    /// The category of a failed login of a tenant's own, if this is one:
    /// the server out of reach or starting, the role's or the server's
    /// connections all taken, the login refused, its password unreadable.
    pub fn login_reason(&self) -> Option<&'static str> {
        match self {
            Self::TenantCredentials(_) => Some("TenantCredentialsUnavailable"),
            Self::TenantLogin { source, .. } => Some(match source.code() {
                None => "PostgresUnavailable",
                Some(c) if *c == SqlState::CANNOT_CONNECT_NOW => "PostgresUnavailable",
                Some(c) if *c == SqlState::TOO_MANY_CONNECTIONS => "PostgresConnectionLimit",
                Some(_) => "TenantLoginRefused",
            }),
            _ => None,
        }
    }
}

/// What a converge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Converged {
    /// Statements run (shared set-up included).
    pub statements: usize,
    /// An existing role's password was set again (never true on creation).
    pub password_changed: bool,
}

/// The backend's shared set-up, read without a lock. `$1`: extensions
/// schema; `$2`: tenants' group.
const SHARED_QUERY: &str = r#"
SELECT
  current_database()::text,
  EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
  (SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'),
  EXISTS (SELECT 1 FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
          WHERE d.datname = current_database() AND a.grantee = 0),
  EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
          WHERE n.nspname = 'public' AND a.grantee = 0),
  EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2),
  EXISTS (SELECT 1 FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a, pg_roles g
          WHERE d.datname = current_database() AND g.rolname = $2
            AND a.grantee = g.oid AND a.privilege_type = 'CONNECT'),
  EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a, pg_roles g
          WHERE n.nspname = $1 AND g.rolname = $2
            AND a.grantee = g.oid AND a.privilege_type = 'USAGE'),
  ARRAY(SELECT DISTINCT d.datname::text
        FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
        WHERE d.datname <> current_database() AND d.datallowconn
          AND a.grantee = 0 AND a.privilege_type = 'CONNECT'
          AND pg_has_role(d.datdba, 'USAGE')
        ORDER BY 1)
"#;

/// One tenant's role and schema. `$1`: role; `$2`: schema; `$3`: extensions schema.
const TENANT_QUERY: &str = r#"
SELECT
  r.oid IS NOT NULL,
  coalesce(r.rolcanlogin, false),
  coalesce(r.rolsuper, false),
  coalesce(r.rolcreatedb, false),
  coalesce(r.rolcreaterole, false),
  coalesce(r.rolreplication, false),
  coalesce(r.rolbypassrls, false),
  coalesce(r.rolinherit, false),
  coalesce(r.rolconnlimit, -1),
  coalesce(r.rolconfig, '{}')::text[],
  quote_ident($2) || ', ' || quote_ident($3),
  n.oid IS NOT NULL,
  coalesce(n.nspowner = r.oid, false),
  EXISTS (SELECT 1 FROM pg_default_acl d WHERE d.defaclrole = r.oid AND d.defaclobjtype = 'f' AND d.defaclnamespace = 0),
  current_user::text
FROM (SELECT 1) AS one
LEFT JOIN pg_roles r ON r.rolname = $1
LEFT JOIN pg_namespace n ON n.nspname = $2
"#;

/// Every membership row touching the role `$1`: whether the role is the
/// member (else the other role is), the other role, and the grantor.
const MEMBERSHIPS_QUERY: &str = r#"
SELECT m.member = r.oid, o.rolname::text, coalesce(gr.rolname, current_user)::text
FROM pg_roles r
JOIN pg_auth_members m ON m.member = r.oid OR m.roleid = r.oid
JOIN pg_roles o ON o.oid = CASE WHEN m.member = r.oid THEN m.roleid ELSE m.member END
LEFT JOIN pg_roles gr ON gr.oid = m.grantor
WHERE r.rolname = $1
ORDER BY 1, 2, 3
"#;

/// The role's stored verifier; needs read access to `pg_authid` (a superuser
/// admin has it).
const PASSWORD_QUERY: &str = "SELECT rolpassword FROM pg_authid WHERE rolname = $1";

/// What `pg_authid` shows of a role's password.
enum StoredPassword {
    /// Not asked for (the policy keeps the existing password).
    NotRead,
    /// `pg_authid` is not readable to the admin (SQLSTATE 42501).
    Unreadable,
    /// The role's `rolpassword`; `None` when it has no password.
    Read(Option<String>),
}

/// One configured backend: its pool, and the lock its shared set-up is
/// repaired under, so one slow backend never holds up another.
struct Backend {
    pool: Pool,
    setup: tokio::sync::Mutex<()>,
    /// The admin DSN's address, database and TLS, for tenants' own logins.
    login: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

/// The pooled connections to every configured Postgres backend.
pub struct Postgres {
    backends: BTreeMap<String, Backend>,
    metrics: Arc<Metrics>,
    /// Tenants' own sessions between two pieces of their work.
    idle: IdleSessions,
}

impl Postgres {
    /// Builds one pool per backend from its admin DSN, with no CA beyond the
    /// DSN's `sslrootcert`; connections open lazily.
    pub fn new(
        backends: &[(PostgresBackendConfig, String)],
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let backends: Vec<_> = backends
            .iter()
            .map(|(config, dsn)| (config.clone(), dsn.clone(), None))
            .collect();
        Self::with_ca(&backends, timeout, metrics)
    }

    /// [`Postgres::new`] with each backend's CA bundle (PEM, from its
    /// `caSecret`). TLS follows the DSN's `sslmode` (see [`tls`]); a
    /// configuration that contradicts itself is refused here, at start-up.
    pub fn with_ca(
        backends: &[(PostgresBackendConfig, String, Option<String>)],
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut pools = BTreeMap::new();
        for (config, dsn, ca) in backends {
            let context = || format!("Postgres backend {}", config.name);
            let split = tls::split_dsn(dsn).with_context(context)?;
            let mut bundle = ca.clone().unwrap_or_default();
            if let Some(path) = &split.root_cert {
                let file = std::fs::read_to_string(path)
                    .with_context(|| format!("{}: reading sslrootcert {path}", context()))?;
                bundle = format!("{bundle}\n{file}");
            }
            let has_ca = ca.is_some() || split.root_cert.is_some();
            let plan = tls::plan(split.mode, has_ca).with_context(context)?;
            if let Some(warning) = plan.warning {
                tracing::warn!(backend = %config.name, "{warning}");
            }
            let roots = if has_ca {
                tls::roots(&bundle).with_context(context)?
            } else {
                rustls::RootCertStore::empty()
            };
            let mut pg: tokio_postgres::Config = split.dsn.parse().with_context(context)?;
            pg.connect_timeout(timeout).ssl_mode(plan.mode);
            // Named, so tenants' logins reach the admin's database rather
            // than one named after themselves (Postgres' default).
            if pg.get_dbname().is_none() {
                let database = pg.get_user().unwrap_or("postgres").to_string();
                pg.dbname(&database);
            }
            let connector = tls::connector(plan.verify, roots).with_context(context)?;
            let manager = Manager::from_config(
                pg.clone(),
                connector.clone(),
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
            pools.insert(
                config.name.clone(),
                Backend {
                    pool,
                    setup: tokio::sync::Mutex::new(()),
                    login: pg,
                    tls: connector,
                },
            );
        }
        Ok(Self {
            backends: pools,
            metrics,
            idle: Default::default(),
        })
    }

    /// Whether `backend` is configured.
    pub fn has_backend(&self, backend: &str) -> bool {
        self.backends.contains_key(backend)
    }

    fn backend(&self, backend: &str) -> Result<&Backend, PostgresError> {
        self.backends
            .get(backend)
            .ok_or_else(|| PostgresError::UnknownBackend(backend.to_string()))
    }

    /// A session on `backend` logged in as the tenant's own role, for work
    /// in the tenant's schema. The tenant's code — triggers, functions and
    /// views on the tables it owns — can run during that work. With the
    /// tenant as the authenticated user, nothing that code does (`RESET
    /// ROLE`, `SET ROLE`, `SET SESSION AUTHORIZATION`) reaches beyond the
    /// tenant's own privileges; from an admin session that had only `SET
    /// ROLE` to the tenant, `RESET ROLE` would make it the admin. An idle
    /// session of the same login is reused (see `idle`); `password` is
    /// asked for only when a new one is opened.
    pub async fn tenant_session<F, Fut>(
        &self,
        backend: &str,
        role: &str,
        password: F,
    ) -> Result<TenantSession<'_>, PostgresError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, PostgresError>>,
    {
        let b = self.backend(backend)?;
        let key = format!("{backend}/{role}");
        let login_error = |source| PostgresError::TenantLogin {
            backend: backend.to_string(),
            role: role.to_string(),
            source,
        };
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(&key, std::time::Instant::now());
        if let Some((client, pid)) = reused {
            // Whatever the tenant's code left on the session goes.
            if client.batch_execute("DISCARD ALL").await.is_ok() {
                return Ok(TenantSession {
                    client: Some(client),
                    pid,
                    key,
                    idle: &self.idle,
                });
            }
        }
        let mut config = b.login.clone();
        config.user(role).password(password().await?);
        let (client, connection) = config.connect(b.tls.clone()).await.map_err(login_error)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a tenant's Postgres session ended");
            }
        });
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(login_error)?
            .get(0);
        Ok(TenantSession {
            client: Some(client),
            pid,
            key,
            idle: &self.idle,
        })
    }

    /// Ends a tenant session's server process from an admin session: a
    /// cancel request can be caught by the tenant's code, this cannot.
    pub async fn terminate(&self, backend: &str, session: TenantSession<'_>) {
        let pid = session.pid;
        drop(session);
        let result = match self.client(backend).await {
            Ok(admin) => admin
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!(backend, error = %e, "ending a tenant's session failed");
        }
    }

    async fn client(&self, backend: &str) -> Result<deadpool_postgres::Object, PostgresError> {
        self.backend(backend)?
            .pool
            .get()
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
            .map_err(|source| statement_error(backend, source))?;
        self.metrics
            .backend_wrote("postgres", statements.len() as u64);
        Ok(())
    }

    /// Opens a pooled connection to every backend, so that the first
    /// tenant's reconcile does not wait for the handshake and
    /// authentication. A backend out of reach is reported here, and again
    /// by each reconcile that needs it.
    pub async fn warm(&self) {
        futures::future::join_all(self.backends.iter().map(|(name, backend)| async move {
            if let Err(e) = backend.pool.get().await {
                tracing::warn!(backend = %name, error = %e, "cannot reach the Postgres backend yet");
            }
        }))
        .await;
    }

    /// Runs the shared set-up's statements when `seen` (read without a lock)
    /// shows a gap: under this backend's lock, re-read first, so tenants
    /// converging at once do not race to create the same objects.
    async fn repair_shared(
        &self,
        backend: &str,
        client: &deadpool_postgres::Object,
        seen: SharedState,
    ) -> Result<usize, PostgresError> {
        if plan_shared(&seen).is_empty() {
            return Ok(0);
        }
        let _setup = self.backend(backend)?.setup.lock().await;
        let state = read_shared(client)
            .await
            .map_err(|e| statement_error(backend, e))?;
        let sql = plan_shared(&state);
        self.execute(backend, client, &sql).await?;
        if !sql.is_empty() {
            tracing::info!(
                backend,
                statements = sql.len(),
                "repaired the shared Postgres set-up"
            );
        }
        Ok(sql.len())
    }

    async fn state(
        &self,
        backend: &str,
        client: &deadpool_postgres::Object,
        names: &TenantNames,
    ) -> Result<TenantState, PostgresError> {
        read_tenant(client, names)
            .await
            .map_err(|e| statement_error(backend, e))
    }

    /// Converges the backend's shared set-up and the tenant's role and
    /// schema; see [`PasswordPolicy`] for the password and [`tier_limits`]
    /// for the role's limits.
    ///
    /// The stored password is verified against `pg_authid`. When the admin
    /// cannot read it (SQLSTATE 42501, a non-superuser admin), the password
    /// is unknown: it is then set only under [`PasswordPolicy::Set`] (new
    /// credentials), so a converged tenant still costs no DDL.
    pub async fn ensure_tenant(
        &self,
        backend: &str,
        names: &TenantNames,
        password: &str,
        policy: PasswordPolicy,
        tier: Tier,
    ) -> Result<Converged, PostgresError> {
        let _timer = self.metrics.backend_timer("postgres", "ensure_tenant");
        let client = self.client(backend).await?;
        let enforce = policy != PasswordPolicy::KeepExisting;
        // Independent reads, pipelined on one connection.
        let (shared, state, stored) =
            tokio::join!(read_shared(&client), read_tenant(&client, names), async {
                if enforce {
                    read_password(&client, names).await
                } else {
                    Ok(StoredPassword::NotRead)
                }
            },);
        let to_error = |e| statement_error(backend, e);
        let (shared, state, stored) = (
            shared.map_err(to_error)?,
            state.map_err(to_error)?,
            stored.map_err(to_error)?,
        );
        let mut statements = self.repair_shared(backend, &client, shared).await?;

        let reset = state.role_exists
            && password_needs_reset(policy, check_password(stored, password).await);
        let verifier = (!state.role_exists || reset)
            .then(|| postgres_protocol::password::scram_sha_256(password.as_bytes()));
        let sql = plan_tenant(names, &state, &tier_limits(tier), verifier.as_deref());
        self.execute(backend, &client, &sql).await?;
        statements += sql.len();
        Ok(Converged {
            statements,
            password_changed: reset,
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
                crate::naming::quote_ident(&names.schema)
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
            .map_err(|source| statement_error(backend, source))?;
        Ok(())
    }
}

fn statement_error(backend: &str, source: tokio_postgres::Error) -> PostgresError {
    PostgresError::Statement {
        backend: backend.to_string(),
        source,
    }
}

/// Runs a catalog query through the connection's statement cache.
async fn query(
    client: &deadpool_postgres::Object,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql).await?;
    client.query(&statement, params).await
}

async fn query_one(
    client: &deadpool_postgres::Object,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql).await?;
    client.query_one(&statement, params).await
}

async fn read_shared(
    client: &deadpool_postgres::Object,
) -> Result<SharedState, tokio_postgres::Error> {
    let row = query_one(client, SHARED_QUERY, &[&EXTENSIONS_SCHEMA, &TENANT_GROUP]).await?;
    Ok(SharedState {
        database: row.get(0),
        extensions_schema_exists: row.get(1),
        vector_schema: row.get(2),
        public_on_database: row.get(3),
        public_on_public_schema: row.get(4),
        group_exists: row.get(5),
        group_can_connect: row.get(6),
        group_uses_extensions: row.get(7),
        other_databases_open_to_public: row.get(8),
    })
}

async fn read_tenant(
    client: &deadpool_postgres::Object,
    names: &TenantNames,
) -> Result<TenantState, tokio_postgres::Error> {
    let tenant_params: [&(dyn ToSql + Sync); 3] = [&names.role, &names.schema, &EXTENSIONS_SCHEMA];
    let role_param: [&(dyn ToSql + Sync); 1] = [&names.role];
    let (row, memberships) = tokio::try_join!(
        query_one(client, TENANT_QUERY, &tenant_params),
        query(client, MEMBERSHIPS_QUERY, &role_param),
    )?;
    let (mut member_of, mut members) = (vec![], vec![]);
    for m in memberships {
        let membership = Membership {
            role: m.get(1),
            grantor: m.get(2),
        };
        if m.get::<_, bool>(0) {
            member_of.push(membership);
        } else {
            members.push(membership);
        }
    }
    Ok(TenantState {
        role_exists: row.get(0),
        role_can_login: row.get(1),
        attributes: RoleAttributes {
            superuser: row.get(2),
            create_db: row.get(3),
            create_role: row.get(4),
            replication: row.get(5),
            bypass_rls: row.get(6),
            inherit: row.get(7),
        },
        connection_limit: row.get(8),
        config: row.get(9),
        search_path_as_stored: row.get(10),
        schema_exists: row.get(11),
        schema_owned_by_role: row.get(12),
        function_defaults_private: row.get(13),
        admin: row.get(14),
        member_of,
        members,
    })
}

async fn read_password(
    client: &deadpool_postgres::Object,
    names: &TenantNames,
) -> Result<StoredPassword, tokio_postgres::Error> {
    match query(client, PASSWORD_QUERY, &[&names.role]).await {
        Ok(rows) => Ok(StoredPassword::Read(
            rows.first().and_then(|r| r.get::<_, Option<String>>(0)),
        )),
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            Ok(StoredPassword::Unreadable)
        }
        Err(e) => Err(e),
    }
}

/// Compares the stored verifier with `password` off the async workers: it
/// costs thousands of HMAC rounds.
async fn check_password(stored: StoredPassword, password: &str) -> PasswordCheck {
    let verifier = match stored {
        StoredPassword::NotRead | StoredPassword::Unreadable => return PasswordCheck::Unknown,
        StoredPassword::Read(None) => return PasswordCheck::Differs,
        StoredPassword::Read(Some(v)) => v,
    };
    let password = password.to_string();
    let matches = tokio::task::spawn_blocking(move || scram::verifies(&verifier, &password))
        .await
        .unwrap_or(false);
    if matches {
        PasswordCheck::Matches
    } else {
        PasswordCheck::Differs
    }
}
