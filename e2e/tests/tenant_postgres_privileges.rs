//! Postgres privileges beyond the tenant's schema, proven with tenants' real
//! credentials: no CONNECT on any other database, per-tier session limits,
//! and drift in the shared set-up, role attributes, memberships, settings and
//! the password undone by the next resync.

use std::collections::BTreeMap;
use std::time::Duration;

use partnerplane_e2e::tenants::{credentials, delete_tenants, pg_admin, pg_connect_to, sqlstate};
use partnerplane_e2e::{Operator, Testbed, apply, unique_name, wait_condition, wait_until};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);

/// Applies a tenant whose credentials also go to a Secret, waits until it is
/// Ready and returns them.
async fn provision(
    client: &kube::Client,
    operator: &Operator,
    name: &str,
    mut spec: Value,
) -> anyhow::Result<BTreeMap<String, String>> {
    spec["secrets"] = json!({"store": "Both"});
    apply(client, &operator.tenant(name, spec), None, false).await?;
    let tenant = wait_condition(client, name, "Ready", "True", DEADLINE).await?;
    let namespace = tenant.status.and_then(|s| s.namespace).expect("namespace");
    credentials(client, &namespace).await
}

/// Connects as the tenant and returns the SQLSTATE of the refusal, if any.
async fn refusal(
    testbed: &Testbed,
    database: &str,
    creds: &BTreeMap<String, String>,
) -> Option<String> {
    match pg_connect_to(testbed, database, &creds["PGUSER"], &creds["PGPASSWORD"]).await {
        Ok(_) => None,
        Err(e) => Some(sqlstate(&e).unwrap_or("no SQLSTATE").to_string()),
    }
}

/// Waits until `sql`, run as the admin with `params`, returns true.
async fn wait_admin_sees(
    admin: &tokio_postgres::Client,
    what: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> anyhow::Result<()> {
    wait_until(what, DEADLINE, || async move {
        let done: bool = admin.query_one(sql, params).await?.get(0);
        Ok(done.then_some(()))
    })
    .await
}

#[tokio::test]
async fn tenants_reach_only_their_database_within_their_tiers_limits() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    // Backends have no watch: a short resync makes drift visible quickly.
    let operator =
        Operator::start(&testbed, &unique_name("pgpriv"), &["--resync-seconds", "2"]).await?;
    let (name_a, name_b) = (
        format!("{}-a", operator.shard),
        format!("{}-b", operator.shard),
    );
    let other_database = operator.shard.replace('-', "_");
    let admin = pg_admin(&testbed).await?;

    let result = async {
        let a = provision(&client, &operator, &name_a, json!({"displayName": "A", "tier": "Starter"})).await?;
        let b = provision(&client, &operator, &name_b, json!({"displayName": "B"})).await?;
        let database: String = admin.query_one("SELECT current_database()::text", &[]).await?.get(0);

        // CONNECT: the operator's database only. template1 is open to PUBLIC
        // on a fresh cluster; a database created now is open to PUBLIC until
        // the next resync closes it.
        assert_eq!(refusal(&testbed, &database, &a).await, None);
        assert_eq!(refusal(&testbed, "template1", &a).await.as_deref(), Some("42501"));
        admin.batch_execute(&format!(r#"CREATE DATABASE "{other_database}""#)).await?;
        wait_until("CONNECT on a new database to be revoked from PUBLIC", DEADLINE, || {
            let (testbed, a, db) = (&testbed, &a, &other_database);
            async move { Ok((refusal(testbed, db, a).await.as_deref() == Some("42501")).then_some(())) }
        })
        .await?;
        assert_eq!(refusal(&testbed, &other_database, &b).await.as_deref(), Some("42501"));

        // Shared set-up drift: PUBLIC's CONNECT on the operator's database comes back.
        admin.batch_execute(&format!(r#"GRANT CONNECT ON DATABASE "{database}" TO PUBLIC"#)).await?;
        wait_admin_sees(
            &admin,
            "PUBLIC's CONNECT on the operator's database to be revoked again",
            "SELECT NOT EXISTS (SELECT 1 FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) x
                                WHERE d.datname = current_database() AND x.grantee = 0)",
            &[],
        )
        .await?;
        assert_eq!(refusal(&testbed, &database, &a).await, None, "the group keeps CONNECT");

        // Limits: Starter's, as the catalog shows them and as a session sees them.
        let row = admin
            .query_one(
                "SELECT rolconnlimit, rolconfig::text[] FROM pg_roles WHERE rolname = $1",
                &[&a["PGUSER"]],
            )
            .await?;
        assert_eq!(row.get::<_, i32>(0), 10);
        let config: Vec<String> = row.get(1);
        for entry in ["statement_timeout=30s", "idle_in_transaction_session_timeout=60s"] {
            assert!(config.iter().any(|c| c == entry), "{entry} in {config:?}");
        }
        let session = pg_connect_to(&testbed, &database, &a["PGUSER"], &a["PGPASSWORD"]).await?;
        let timeout: String = session.query_one("SHOW statement_timeout", &[]).await?.get(0);
        assert_eq!(timeout, "30s");
        let idle: String = session.query_one("SHOW idle_in_transaction_session_timeout", &[]).await?.get(0);
        assert_eq!(idle, "1min");
        let b_limit: i32 = admin
            .query_one("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", &[&b["PGUSER"]])
            .await?
            .get(0);
        assert_eq!(b_limit, 25, "Standard tier");

        // The eleventh session of A is refused; B is not affected. Sessions
        // closed above may take a moment to leave the server's count.
        wait_admin_sees(
            &admin,
            "A's earlier sessions to end",
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE usename = $1",
            &[&a["PGUSER"]],
        )
        .await?;
        let mut sessions = vec![session];
        while sessions.len() < 10 {
            sessions.push(pg_connect_to(&testbed, &database, &a["PGUSER"], &a["PGPASSWORD"]).await?);
        }
        assert_eq!(refusal(&testbed, &database, &a).await.as_deref(), Some("53300"));
        assert_eq!(refusal(&testbed, &database, &b).await, None);
        drop(sessions);
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &[name_a, name_b]).await?;
    admin
        .batch_execute(&format!(
            r#"DROP DATABASE IF EXISTS "{other_database}" WITH (FORCE)"#
        ))
        .await?;
    result
}

#[tokio::test]
async fn role_attributes_memberships_settings_and_password_drift_is_undone() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(
        &testbed,
        &unique_name("pgdrift"),
        &["--resync-seconds", "2"],
    )
    .await?;
    let (name_a, name_b) = (
        format!("{}-a", operator.shard),
        format!("{}-b", operator.shard),
    );
    let admin = pg_admin(&testbed).await?;

    let result = async {
        let a = provision(&client, &operator, &name_a, json!({"displayName": "A"})).await?;
        let b = provision(&client, &operator, &name_b, json!({"displayName": "B"})).await?;
        let database: String = admin.query_one("SELECT current_database()::text", &[]).await?.get(0);
        let (role_a, role_b) = (&a["PGUSER"], &b["PGUSER"]);
        let pg_b = pg_connect_to(&testbed, &database, role_b, &b["PGPASSWORD"]).await?;
        let b_table = format!(r#""{}".partners"#, b["PGSCHEMA"]);
        pg_b.batch_execute(&format!("CREATE TABLE {b_table} (id text); INSERT INTO {b_table} VALUES ('secret')"))
            .await?;

        admin.batch_execute(&format!(r#"ALTER ROLE "{role_a}" SUPERUSER CREATEDB CREATEROLE BYPASSRLS"#)).await?;
        wait_admin_sees(
            &admin,
            "A's elevated attributes to be removed",
            "SELECT NOT (rolsuper OR rolcreatedb OR rolcreaterole OR rolbypassrls) FROM pg_roles WHERE rolname = $1",
            &[role_a],
        )
        .await?;

        admin.batch_execute(&format!(r#"GRANT pg_read_all_data TO "{role_a}""#)).await?;
        wait_admin_sees(
            &admin,
            "A's membership in pg_read_all_data to be revoked",
            "SELECT NOT pg_has_role($1, 'pg_read_all_data', 'MEMBER')",
            &[role_a],
        )
        .await?;

        // A as a member of B's role would read B's tables as their owner.
        admin.batch_execute(&format!(r#"GRANT "{role_b}" TO "{role_a}""#)).await?;
        wait_admin_sees(
            &admin,
            "A's membership in B's role to be revoked",
            "SELECT NOT pg_has_role($1, $2, 'MEMBER')",
            &[role_a, role_b],
        )
        .await?;
        let pg_a = pg_connect_to(&testbed, &database, role_a, &a["PGPASSWORD"]).await?;
        let err = pg_a
            .query(&format!("SELECT * FROM {b_table}"), &[])
            .await
            .expect_err("A reads B's table");
        assert_eq!(sqlstate(&err), Some("42501"), "{err}");
        let in_group: bool = admin
            .query_one("SELECT pg_has_role($1, 'partnerplane_tenants', 'MEMBER')", &[role_a])
            .await?
            .get(0);
        assert!(in_group, "A stays in the tenants' group");

        // Settings and the connection limit follow the tier again.
        admin
            .batch_execute(&format!(
                r#"ALTER ROLE "{role_a}" CONNECTION LIMIT -1;
                   ALTER ROLE "{role_a}" SET statement_timeout = 0;
                   ALTER ROLE "{role_a}" SET session_replication_role = replica"#
            ))
            .await?;
        wait_admin_sees(
            &admin,
            "A's limit and settings to be restored",
            "SELECT rolconnlimit = 25
                    AND rolconfig @> ARRAY['statement_timeout=60s']
                    AND NOT EXISTS (SELECT 1 FROM unnest(rolconfig) c WHERE c LIKE 'session_replication_role=%')
             FROM pg_roles WHERE rolname = $1",
            &[role_a],
        )
        .await?;

        // Password: an admin's change is undone; the Secret's password logs in
        // again and the planted one no longer does.
        admin.batch_execute(&format!(r#"ALTER ROLE "{role_a}" PASSWORD 'other'"#)).await?;
        wait_until("A's password to be restored", DEADLINE, || {
            let (testbed, a, database) = (&testbed, &a, &database);
            async move {
                let planted = pg_connect_to(testbed, database, &a["PGUSER"], "other").await;
                let planted = planted.err().and_then(|e| sqlstate(&e).map(str::to_string));
                Ok((planted.as_deref() == Some("28P01") && refusal(testbed, database, a).await.is_none())
                    .then_some(()))
            }
        })
        .await?;
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &[name_a, name_b]).await?;
    result
}
