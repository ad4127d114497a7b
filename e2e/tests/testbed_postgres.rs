//! The test bed's PostgreSQL 16 has pgvector: the extension installs and an
//! HNSW index answers nearest-neighbour queries.

use partnerplane_e2e::{Testbed, unique_name};
use tokio_postgres::NoTls;

#[tokio::test]
async fn pgvector_and_an_hnsw_index_work() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let (client, connection) = tokio_postgres::connect(&testbed.pg_admin_dsn, NoTls).await?;
    tokio::spawn(connection);

    let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    assert!(version.starts_with("16."), "PostgreSQL {version}");

    // The extension may already live in another schema (the operator keeps it
    // in `extensions`): put that schema on the path.
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
        .await?;
    let home: String = client
        .query_one(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'",
            &[],
        )
        .await?
        .get(0);
    client
        .batch_execute(&format!("SET search_path = {home}, public"))
        .await?;

    let schema = unique_name("smoke_pgvector").replace('-', "_");
    client
        .batch_execute(&format!(
            r#"CREATE SCHEMA "{schema}";
               CREATE TABLE "{schema}".docs (id int PRIMARY KEY, embedding vector(3));
               INSERT INTO "{schema}".docs VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0,0,1]');
               CREATE INDEX docs_hnsw ON "{schema}".docs
                 USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);"#
        ))
        .await?;

    let method: String = client
        .query_one(
            "SELECT am.amname::text FROM pg_class c JOIN pg_am am ON am.oid = c.relam
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = 'docs_hnsw'",
            &[&schema],
        )
        .await?
        .get(0);
    assert_eq!(method, "hnsw");

    client.batch_execute("SET enable_seqscan = off").await?;
    let nearest: i32 = client
        .query_one(
            &format!(
                r#"SELECT id FROM "{schema}".docs ORDER BY embedding <=> '[0.1,0.9,0]' LIMIT 1"#
            ),
            &[],
        )
        .await?
        .get(0);
    client
        .batch_execute(&format!(r#"DROP SCHEMA "{schema}" CASCADE"#))
        .await?;
    assert_eq!(nearest, 2);
    Ok(())
}
