//! Desired Postgres state as pure functions: what the catalog showed in,
//! the statements that close the gap out. No I/O here.

use crate::api::tenant::Tier;
use crate::naming::{TenantNames, quote_ident};

use super::{EXTENSIONS_SCHEMA, TENANT_GROUP};

/// Per-tier session limits of a tenant's role, so one tenant can neither
/// take every connection of the cluster nor hold locks indefinitely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierLimits {
    /// `CONNECTION LIMIT` of the role.
    pub connection_limit: i32,
    /// `statement_timeout`, as Postgres stores it in `rolconfig`.
    pub statement_timeout: &'static str,
    /// `idle_in_transaction_session_timeout`, as stored in `rolconfig`.
    pub idle_in_transaction_session_timeout: &'static str,
}

/// The limits of `tier`.
pub fn tier_limits(tier: Tier) -> TierLimits {
    let (connection_limit, statement_timeout) = match tier {
        Tier::Starter => (10, "30s"),
        Tier::Standard => (25, "60s"),
        Tier::Enterprise => (50, "300s"),
    };
    TierLimits {
        connection_limit,
        statement_timeout,
        idle_in_transaction_session_timeout: "60s",
    }
}

/// One row of `pg_auth_members`, seen from the tenant's role: the other role
/// and who granted the membership (needed to revoke it exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub role: String,
    pub grantor: String,
}

/// Role attributes that must stay off (or, for `inherit`, on: the tenant
/// reaches CONNECT and the extensions schema through its group).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoleAttributes {
    pub superuser: bool,
    pub create_db: bool,
    pub create_role: bool,
    pub replication: bool,
    pub bypass_rls: bool,
    pub inherit: bool,
}

impl RoleAttributes {
    /// What `CREATE ROLE … LOGIN` gives and a tenant keeps.
    pub const DESIRED: Self = Self {
        superuser: false,
        create_db: false,
        create_role: false,
        replication: false,
        bypass_rls: false,
        inherit: true,
    };
}

/// What the catalog says about one tenant.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TenantState {
    pub role_exists: bool,
    pub role_can_login: bool,
    pub attributes: RoleAttributes,
    /// `rolconnlimit` (-1: unlimited).
    pub connection_limit: i32,
    /// `rolconfig`: `name=value` entries.
    pub config: Vec<String>,
    /// The desired search path as the server spells it in `rolconfig`
    /// (it quotes identifiers only where needed).
    pub search_path_as_stored: String,
    pub schema_exists: bool,
    pub schema_owned_by_role: bool,
    pub function_defaults_private: bool,
    /// Roles granted to the tenant's role.
    pub member_of: Vec<Membership>,
    /// Roles the tenant's role is granted to.
    pub members: Vec<Membership>,
    /// The operator's own admin user (`current_user`), whose membership in
    /// the tenant's role Postgres 16 adds when it is not a superuser.
    pub admin: String,
}

impl TenantState {
    fn in_tenant_group(&self) -> bool {
        self.member_of.iter().any(|m| m.role == TENANT_GROUP)
    }
}

/// How the stored password compares with the one the operator holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The stored verifier accepts the password.
    Matches,
    /// It does not, or the role has no (SCRAM) password.
    Differs,
    /// The credential store (`pg_authid`) is not readable.
    Unknown,
}

/// Whose password an existing role must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordPolicy {
    /// New credentials (none were stored): set on every role, whatever it has.
    Set,
    /// The password given is the tenant's stored one: an existing role whose
    /// verifier does not accept it gets it again.
    Enforce,
    /// The credential store is unreadable, so the password given may be a
    /// stand-in: only a new role gets it; an existing role keeps its own.
    KeepExisting,
}

/// Whether an existing role's password must be set. A stored password that
/// cannot be read (`Unknown`) is not rewritten on every converge: only new
/// credentials are set blindly.
pub fn password_needs_reset(policy: PasswordPolicy, check: PasswordCheck) -> bool {
    match policy {
        PasswordPolicy::Set => check != PasswordCheck::Matches,
        PasswordPolicy::Enforce => check == PasswordCheck::Differs,
        PasswordPolicy::KeepExisting => false,
    }
}

/// The `rolconfig` entries the tenant's role must have, as `(name, value as
/// stored, value as written in SQL)`.
fn desired_settings(
    names: &TenantNames,
    state: &TenantState,
    limits: &TierLimits,
) -> Vec<(&'static str, String, String)> {
    vec![
        (
            "search_path",
            state.search_path_as_stored.clone(),
            format!(
                "{}, {}",
                quote_ident(&names.schema),
                quote_ident(EXTENSIONS_SCHEMA)
            ),
        ),
        (
            "statement_timeout",
            limits.statement_timeout.to_string(),
            format!("'{}'", limits.statement_timeout),
        ),
        (
            "idle_in_transaction_session_timeout",
            limits.idle_in_transaction_session_timeout.to_string(),
            format!("'{}'", limits.idle_in_transaction_session_timeout),
        ),
    ]
}

/// The statements that bring a tenant from `state` to its desired state.
/// `verifier` is the SCRAM verifier to set: always given for a new role, and
/// for an existing one only when its password must change.
pub fn plan_tenant(
    names: &TenantNames,
    state: &TenantState,
    limits: &TierLimits,
    verifier: Option<&str>,
) -> Vec<String> {
    let role = quote_ident(&names.role);
    let schema = quote_ident(&names.schema);
    let group = quote_ident(TENANT_GROUP);
    let mut sql = vec![];
    if !state.role_exists {
        let password = verifier
            .map(|v| format!(" PASSWORD '{v}'"))
            .unwrap_or_default();
        sql.push(format!(
            "CREATE ROLE {role} LOGIN{password} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT {} IN ROLE {group}",
            limits.connection_limit
        ));
    } else {
        let options = role_options(state, limits);
        if !options.is_empty() {
            sql.push(format!("ALTER ROLE {role} {}", options.join(" ")));
        }
        if let Some(v) = verifier {
            sql.push(format!("ALTER ROLE {role} PASSWORD '{v}'"));
        }
        sql.extend(plan_memberships(names, state));
    }
    sql.extend(plan_settings(names, state, limits));
    if !state.schema_exists {
        sql.push(format!("CREATE SCHEMA {schema} AUTHORIZATION {role}"));
    } else if !state.schema_owned_by_role {
        sql.push(format!("ALTER SCHEMA {schema} OWNER TO {role}"));
    }
    if !state.function_defaults_private {
        // Functions are executable by PUBLIC by default; keep the tenant's own.
        sql.push(format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {role} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC"
        ));
    }
    sql
}

/// `ALTER ROLE` options that repair drifted attributes and the connection limit.
fn role_options(state: &TenantState, limits: &TierLimits) -> Vec<String> {
    let a = &state.attributes;
    let mut options = vec![];
    if !state.role_can_login {
        options.push("LOGIN".to_string());
    }
    for (drifted, option) in [
        (a.superuser, "NOSUPERUSER"),
        (a.create_db, "NOCREATEDB"),
        (a.create_role, "NOCREATEROLE"),
        (a.replication, "NOREPLICATION"),
        (a.bypass_rls, "NOBYPASSRLS"),
        (!a.inherit, "INHERIT"),
    ] {
        if drifted {
            options.push(option.to_string());
        }
    }
    if state.connection_limit != limits.connection_limit {
        options.push(format!("CONNECTION LIMIT {}", limits.connection_limit));
    }
    options
}

/// The tenant's role belongs to the tenants' group and nothing else, and no
/// role but the operator's admin belongs to it. Each membership is revoked as
/// recorded (`GRANTED BY`), with what was granted on through it (`CASCADE`).
fn plan_memberships(names: &TenantNames, state: &TenantState) -> Vec<String> {
    let role = quote_ident(&names.role);
    let mut sql = vec![];
    if !state.in_tenant_group() {
        sql.push(format!("GRANT {} TO {role}", quote_ident(TENANT_GROUP)));
    }
    for m in state.member_of.iter().filter(|m| m.role != TENANT_GROUP) {
        sql.push(format!(
            "REVOKE {} FROM {role} GRANTED BY {} CASCADE",
            quote_ident(&m.role),
            quote_ident(&m.grantor)
        ));
    }
    for m in state.members.iter().filter(|m| m.role != state.admin) {
        sql.push(format!(
            "REVOKE {role} FROM {} GRANTED BY {} CASCADE",
            quote_ident(&m.role),
            quote_ident(&m.grantor)
        ));
    }
    sql
}

/// Sets the desired role settings that are missing or differ, and resets any
/// other: a setting nobody asked for (say `session_replication_role`, which a
/// superuser can attach to any role) must not shape the tenant's sessions.
fn plan_settings(names: &TenantNames, state: &TenantState, limits: &TierLimits) -> Vec<String> {
    let role = quote_ident(&names.role);
    let desired = desired_settings(names, state, limits);
    let mut sql = vec![];
    for entry in &state.config {
        let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
        if !desired.iter().any(|(d, _, _)| *d == name) {
            sql.push(format!("ALTER ROLE {role} RESET {}", quote_ident(name)));
        }
    }
    for (name, stored, written) in &desired {
        if !state.config.contains(&format!("{name}={stored}")) {
            sql.push(format!("ALTER ROLE {role} SET {name} = {written}"));
        }
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

/// What the catalog says about a backend's shared set-up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SharedState {
    /// The operator's database (`current_database()`).
    pub database: String,
    pub extensions_schema_exists: bool,
    /// The schema pgvector is installed in, if it is installed.
    pub vector_schema: Option<String>,
    /// PUBLIC holds some right on the operator's database.
    pub public_on_database: bool,
    /// PUBLIC holds some right on the `public` schema.
    pub public_on_public_schema: bool,
    pub group_exists: bool,
    /// The group holds CONNECT on the operator's database itself (not
    /// through PUBLIC, which loses it).
    pub group_can_connect: bool,
    /// The group holds USAGE on the extensions schema.
    pub group_uses_extensions: bool,
    /// Other databases that accept connections, where PUBLIC holds CONNECT
    /// and the admin may revoke it (as their owner or a superuser).
    pub other_databases_open_to_public: Vec<String>,
}

/// The statements that bring a backend's shared set-up to its desired state:
/// pgvector in the extensions schema; PUBLIC without rights on the operator's
/// database and `public` schema, and without CONNECT on any other database;
/// the tenants' group with CONNECT here and USAGE on the extensions schema.
pub fn plan_shared(state: &SharedState) -> Vec<String> {
    let ext = quote_ident(EXTENSIONS_SCHEMA);
    let database = quote_ident(&state.database);
    let group = quote_ident(TENANT_GROUP);
    let mut sql = vec![];
    if !state.extensions_schema_exists {
        sql.push(format!("CREATE SCHEMA IF NOT EXISTS {ext}"));
    }
    // Tenants reach pgvector only through the extensions schema.
    match state.vector_schema.as_deref() {
        None => sql.push(format!(
            "CREATE EXTENSION IF NOT EXISTS vector SCHEMA {ext}"
        )),
        Some(EXTENSIONS_SCHEMA) => {}
        Some(_) => sql.push(format!("ALTER EXTENSION vector SET SCHEMA {ext}")),
    }
    if state.public_on_database {
        sql.push(format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC"));
    }
    if state.public_on_public_schema {
        sql.push("REVOKE ALL ON SCHEMA public FROM PUBLIC".to_string());
    }
    // Database ACLs are cluster-wide: a tenant role could otherwise log in to
    // every other database of the cluster.
    for other in &state.other_databases_open_to_public {
        sql.push(format!(
            "REVOKE CONNECT ON DATABASE {} FROM PUBLIC",
            quote_ident(other)
        ));
    }
    if !state.group_exists {
        sql.push(format!("CREATE ROLE {group} NOLOGIN"));
    }
    if !state.group_exists || !state.group_can_connect {
        sql.push(format!("GRANT CONNECT ON DATABASE {database} TO {group}"));
    }
    if !state.group_exists || !state.group_uses_extensions {
        sql.push(format!("GRANT USAGE ON SCHEMA {ext} TO {group}"));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> TenantNames {
        TenantNames::new("acme", None)
    }

    fn membership(role: &str, grantor: &str) -> Membership {
        Membership {
            role: role.to_string(),
            grantor: grantor.to_string(),
        }
    }

    const LIMITS: TierLimits = TierLimits {
        connection_limit: 25,
        statement_timeout: "60s",
        idle_in_transaction_session_timeout: "60s",
    };

    fn converged() -> TenantState {
        let n = names();
        TenantState {
            role_exists: true,
            role_can_login: true,
            attributes: RoleAttributes::DESIRED,
            connection_limit: 25,
            search_path_as_stored: format!("{}, extensions", n.schema),
            config: vec![
                format!("search_path={}, extensions", n.schema),
                "statement_timeout=60s".to_string(),
                "idle_in_transaction_session_timeout=60s".to_string(),
            ],
            schema_exists: true,
            schema_owned_by_role: true,
            function_defaults_private: true,
            member_of: vec![membership(TENANT_GROUP, "postgres")],
            members: vec![],
            admin: "postgres".to_string(),
        }
    }

    #[test]
    fn tiers_grow_limits_and_share_the_idle_timeout() {
        let (s, m, e) = (
            tier_limits(Tier::Starter),
            tier_limits(Tier::Standard),
            tier_limits(Tier::Enterprise),
        );
        assert_eq!(
            (s.connection_limit, m.connection_limit, e.connection_limit),
            (10, 25, 50)
        );
        assert_eq!(
            (
                s.statement_timeout,
                m.statement_timeout,
                e.statement_timeout
            ),
            ("30s", "60s", "300s")
        );
        assert!(
            [s, m, e]
                .iter()
                .all(|l| l.idle_in_transaction_session_timeout == "60s")
        );
    }

    #[test]
    fn a_new_tenant_gets_a_limited_role_its_settings_schema_and_grants() {
        let state = TenantState {
            search_path_as_stored: "x".into(),
            ..Default::default()
        };
        let sql = plan_tenant(&names(), &state, &LIMITS, Some("SCRAM-SHA-256$x"));
        assert!(sql[0].starts_with("CREATE ROLE \"tenant_acme_"), "{sql:?}");
        assert!(sql[0].contains("LOGIN PASSWORD 'SCRAM-SHA-256$x' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 25"));
        assert!(
            sql[0].ends_with("IN ROLE \"partnerplane_tenants\""),
            "{sql:?}"
        );
        assert!(
            sql.iter()
                .any(|s| s.contains("SET search_path = \"tenant_acme_"))
        );
        assert!(
            sql.iter()
                .any(|s| s.ends_with("SET statement_timeout = '60s'"))
        );
        assert!(
            sql.iter()
                .any(|s| s.ends_with("SET idle_in_transaction_session_timeout = '60s'"))
        );
        assert!(
            sql.iter()
                .any(|s| s.starts_with("CREATE SCHEMA \"tenant_acme_")
                    && s.contains("AUTHORIZATION"))
        );
        assert!(
            sql.iter()
                .any(|s| s.contains("ALTER DEFAULT PRIVILEGES FOR ROLE"))
        );
        assert_eq!(sql.len(), 6, "{sql:?}");
    }

    #[test]
    fn a_converged_tenant_needs_no_statement() {
        assert_eq!(
            plan_tenant(&names(), &converged(), &LIMITS, None),
            Vec::<String>::new()
        );
    }

    #[test]
    fn elevated_attributes_login_and_the_limit_are_repaired_in_one_statement() {
        let state = TenantState {
            role_can_login: false,
            attributes: RoleAttributes {
                superuser: true,
                create_db: true,
                create_role: true,
                replication: true,
                bypass_rls: true,
                inherit: false,
            },
            connection_limit: -1,
            ..converged()
        };
        let sql = plan_tenant(&names(), &state, &LIMITS, None);
        assert_eq!(sql.len(), 1, "{sql:?}");
        assert!(sql[0].ends_with(
            " LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 25"
        ), "{sql:?}");
    }

    #[test]
    fn a_password_is_set_on_an_existing_role_only_when_given() {
        let sql = plan_tenant(&names(), &converged(), &LIMITS, Some("SCRAM-SHA-256$y"));
        assert_eq!(sql.len(), 1, "{sql:?}");
        assert!(sql[0].ends_with("PASSWORD 'SCRAM-SHA-256$y'"));
    }

    #[test]
    fn memberships_other_than_the_group_are_revoked_as_granted() {
        let state = TenantState {
            member_of: vec![membership("pg_read_all_data", "postgres")],
            members: vec![
                membership("postgres", "postgres"),
                membership("tenant_other_1234", "admin2"),
            ],
            ..converged()
        };
        let role = quote_ident(&names().role);
        let sql = plan_tenant(&names(), &state, &LIMITS, None);
        assert_eq!(
            sql,
            vec![
                format!("GRANT \"partnerplane_tenants\" TO {role}"),
                format!("REVOKE \"pg_read_all_data\" FROM {role} GRANTED BY \"postgres\" CASCADE"),
                format!("REVOKE {role} FROM \"tenant_other_1234\" GRANTED BY \"admin2\" CASCADE"),
            ]
        );
    }

    #[test]
    fn the_admins_own_membership_in_the_tenant_role_is_kept() {
        let state = TenantState {
            members: vec![membership("operator_admin", "postgres")],
            admin: "operator_admin".to_string(),
            ..converged()
        };
        assert!(plan_tenant(&names(), &state, &LIMITS, None).is_empty());
    }

    #[test]
    fn settings_follow_the_tier_and_foreign_settings_are_reset() {
        let mut state = converged();
        state.config = vec![
            state.config[0].clone(),
            "statement_timeout=0".to_string(),
            "session_replication_role=replica".to_string(),
        ];
        let limits = tier_limits(Tier::Enterprise);
        let role = quote_ident(&names().role);
        let sql = plan_tenant(&names(), &state, &limits, None);
        assert_eq!(
            sql,
            vec![
                format!("ALTER ROLE {role} CONNECTION LIMIT 50"),
                format!("ALTER ROLE {role} RESET \"session_replication_role\""),
                format!("ALTER ROLE {role} SET statement_timeout = '300s'"),
                format!("ALTER ROLE {role} SET idle_in_transaction_session_timeout = '60s'"),
            ]
        );
    }

    #[test]
    fn a_password_is_reset_unless_it_matches_or_must_be_kept() {
        use PasswordCheck::*;
        use PasswordPolicy::*;
        assert!(!password_needs_reset(Enforce, Matches));
        assert!(password_needs_reset(Enforce, Differs));
        assert!(
            !password_needs_reset(Enforce, Unknown),
            "an unreadable verifier is no reason to rewrite it on every converge"
        );
        assert!(password_needs_reset(Set, Unknown));
        assert!(password_needs_reset(Set, Differs));
        for check in [Matches, Differs, Unknown] {
            assert!(!password_needs_reset(KeepExisting, check));
        }
    }

    #[test]
    fn dropping_removes_what_the_role_owns_before_the_role() {
        let sql = plan_drop(&names());
        assert!(sql[0].starts_with("DROP SCHEMA IF EXISTS"));
        assert!(sql[1].starts_with("DROP OWNED BY"));
        assert!(sql[2].starts_with("DROP ROLE"));
    }

    fn shared_converged() -> SharedState {
        SharedState {
            database: "app".to_string(),
            extensions_schema_exists: true,
            vector_schema: Some(EXTENSIONS_SCHEMA.to_string()),
            group_exists: true,
            group_can_connect: true,
            group_uses_extensions: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_converged_backend_needs_no_statement() {
        assert!(plan_shared(&shared_converged()).is_empty());
    }

    #[test]
    fn a_fresh_backend_is_set_up_completely() {
        let sql = plan_shared(&SharedState {
            database: "app".to_string(),
            public_on_database: true,
            public_on_public_schema: true,
            other_databases_open_to_public: vec!["postgres".into(), "template1".into()],
            ..Default::default()
        });
        assert_eq!(
            sql,
            vec![
                "CREATE SCHEMA IF NOT EXISTS \"extensions\"",
                "CREATE EXTENSION IF NOT EXISTS vector SCHEMA \"extensions\"",
                "REVOKE ALL ON DATABASE \"app\" FROM PUBLIC",
                "REVOKE ALL ON SCHEMA public FROM PUBLIC",
                "REVOKE CONNECT ON DATABASE \"postgres\" FROM PUBLIC",
                "REVOKE CONNECT ON DATABASE \"template1\" FROM PUBLIC",
                "CREATE ROLE \"partnerplane_tenants\" NOLOGIN",
                "GRANT CONNECT ON DATABASE \"app\" TO \"partnerplane_tenants\"",
                "GRANT USAGE ON SCHEMA \"extensions\" TO \"partnerplane_tenants\"",
            ]
        );
    }

    #[test]
    fn shared_drift_is_repaired_piece_by_piece() {
        let sql = plan_shared(&SharedState {
            vector_schema: Some("public".into()),
            public_on_database: true,
            group_can_connect: false,
            ..shared_converged()
        });
        assert_eq!(
            sql,
            vec![
                "ALTER EXTENSION vector SET SCHEMA \"extensions\"",
                "REVOKE ALL ON DATABASE \"app\" FROM PUBLIC",
                "GRANT CONNECT ON DATABASE \"app\" TO \"partnerplane_tenants\"",
            ]
        );
    }
}
